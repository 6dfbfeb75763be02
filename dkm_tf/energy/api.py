"""Public entry points: `estimate`, `estimate_layer`, `estimate_shapes`, `energy_cli_text`."""

import math
import os

from dkm_tf.core import validate
from dkm_tf.energy import constants
from dkm_tf.energy.hierarchy import hierarchy_cost
from dkm_tf.energy.index_cost import AUTO
from dkm_tf.energy.index_cost import resolve as resolve_index_cost
from dkm_tf.energy.matching import collect_sharing, match_pruning, match_sharing, note_unused
from dkm_tf.energy.paper import paper_cost
from dkm_tf.energy.report import EnergyReport, LayerEnergy
from dkm_tf.energy.shapes import (
    LayerShape,
    SharingInfo,
    check_choice,
    check_positive,
)
from dkm_tf.energy.unique_products import expected_unique_fraction


def estimate_layer(shape, *, bits_w=16, bits_x=16, sharing=None, index_cost="none",
                   compute_model="conservative", kept_fraction=1.0):
    """Estimates one layer under the paper metric and the hierarchy model.

    Args:
        shape: A `LayerShape`.
        bits_w: Weight bits B_w (> 0).
        bits_x: Activation bits B_x (> 0).
        sharing: `SharingInfo` of the kernel, or `None` for a dense kernel.
        index_cost: "none" (paper footnote 3: indices not charged to the paper metric),
            "log2" (log₂ K bits per index) or "entropy" (`sharing.index_bits`). The hierarchy
            model always fetches indices: log₂ K bits, or `index_bits` for "entropy". A
            transform-invariant / scaled kernel unit (Son et al., §2.5) costs log₂(K T) + b_s
            bits (`sharing.n_transforms`, `sharing.scale_bits`; entropy: `index_bits` + b_s).
        compute_model: "conservative" (weight sharing leaves compute unchanged) or
            "unique_products" (each distinct codeword is multiplied once per unit position;
            `sharing.unique_fraction`, or its expectation under uniform assignment).
        kept_fraction: Fraction of weights kept after pruning, in (0, 1].

    Returns:
        A `LayerEnergy`.

    Raises:
        ValueError: On invalid arguments, or `index_cost="entropy"` without `index_bits`.
    """
    check_positive("bits_w", bits_w)
    check_positive("bits_x", bits_x)
    check_choice("index_cost", index_cost, constants.INDEX_COSTS)
    check_choice("compute_model", compute_model, constants.COMPUTE_MODELS)
    # numpy scalars too (np.float32(1.0) was refused); bools, NaN and Inf are not
    kept_fraction = validate.check_number("kept_fraction", kept_fraction, "a number in (0, 1]",
                                          low=0, high=1, low_open=True)
    if not isinstance(shape, LayerShape):
        raise TypeError(
            "Invalid value for argument `shape`. Expected a LayerShape. "
            f"Received: shape={shape!r}"
        )
    if shape.kind not in ("conv", "dense"):
        sharing = None
        kept_fraction = 1.0
    paper_bits, hier_bits, unique = 0.0, 0.0, 1.0
    store = None
    if sharing is not None:
        if not isinstance(sharing, SharingInfo):
            raise TypeError(
                "Invalid value for argument `sharing`. Expected a SharingInfo or None. "
                f"Received: sharing={sharing!r}"
            )
        log2k = math.log2(sharing.n_clusters * sharing.n_transforms)  # index k + K t, §2.5
        side = sharing.scale_bits  # a scaled kernel unit's scale, fetched with its index
        if index_cost == "entropy":
            if sharing.index_bits is None:
                raise ValueError(
                    f"index_cost='entropy' needs the entropy of the indices of layer "
                    f"{shape.name!r}: pass SharingInfo(index_bits=...) or palettes with "
                    "`entropy_bits()`."
                )
            paper_bits = hier_bits = float(sharing.index_bits) + side
        else:
            paper_bits = log2k + side if index_cost == "log2" else 0.0
            hier_bits = log2k + side
        if compute_model == "unique_products":
            unique = sharing.unique_fraction
            if unique is None:
                unique = expected_unique_fraction(sharing.n_clusters * sharing.n_transforms,
                                                  shape.out_c // shape.groups,
                                                  sharing.n_codebooks)
        store = sharing.codebook_size * bits_w + kept_fraction * sharing.n_units * hier_bits
    paper = paper_cost(shape, bits_w=bits_w, bits_x=bits_x, sharing=sharing,
                       index_bits=paper_bits, kept_fraction=kept_fraction,
                       unique_fraction=unique)
    compute_fraction = 1.0
    if unique < 1.0:
        conservative = paper_cost(shape, bits_w=bits_w, bits_x=bits_x, sharing=sharing,
                                  index_bits=paper_bits, kept_fraction=kept_fraction)
        compute_fraction = paper.compute_fa / conservative.compute_fa
    hier = hierarchy_cost(shape, bits_w=bits_w, bits_x=bits_x, weight_store_bits=store,
                          kept_fraction=kept_fraction, compute_fraction=compute_fraction)
    if store is None:
        store = shape.n_weights * bits_w * kept_fraction
    return LayerEnergy(shape=shape, paper=paper, hierarchy=hier,
                       n_clusters=None if sharing is None else sharing.n_clusters,
                       unit_dim=None if sharing is None else sharing.unit_dim,
                       index_bits=paper_bits, kept_fraction=float(kept_fraction),
                       unique_fraction=float(unique), stored_weight_bits=float(store))


def estimate_shapes(shapes, *, skipped=(), weight_sharing=None, palettes=None, pruning=None,
                    bits_w=16, bits_x=16, index_cost="none", compute_model="conservative",
                    model_name="", notes=()):
    """Estimates a list of `LayerShape` records with both energy models (see `estimate`).

    Args:
        shapes: Iterable of `LayerShape` records (`conv_shape`, `dense_shape`, ...), in model
            order.
        skipped: `(name, reason)` pairs of layers not estimated, carried into the report;
            compression info naming one of them is not charged (its entry says so).
        weight_sharing: Mapping `{layer_name: SharingInfo}` (or a list of them for layers
            with several kernels), as in `estimate`; a name of no record nor skipped layer
            raises.
        palettes: Iterable of palettes, as in `estimate`.
        pruning: Mapping `{layer_name: kept_fraction}` with fractions in (0, 1].
        bits_w, bits_x: B_w and B_x, weight and activation bits (> 0, default 16).
        index_cost: "none" (default), "log2" or "entropy" (see `estimate_layer`).
        compute_model: "conservative" (default) or "unique_products" (see `estimate_layer`).
        model_name: A str shown in the summary.
        notes: Strings carried into the report (e.g. where its palettes came from).

    Returns:
        An `EnergyReport`; with compression information its `baseline` holds the same
        shapes estimated without it.
    """
    check_positive("bits_w", bits_w)
    check_positive("bits_x", bits_x)
    check_choice("index_cost", index_cost, constants.INDEX_COSTS)
    check_choice("compute_model", compute_model, constants.COMPUTE_MODELS)
    if isinstance(shapes, (str, bytes)) or not hasattr(shapes, "__iter__"):
        raise TypeError("Invalid type for argument `shapes`. Expected a list of LayerShape. "
                        f"Received: shapes={shapes!r}")
    shapes = tuple(shapes)
    for s in shapes:
        if not isinstance(s, LayerShape):
            raise TypeError(f"Expected LayerShape records. Received: {s!r}")
    skipped, notes = _check_report_args(skipped, model_name, notes)
    sharing, unused = match_sharing(
        shapes, collect_sharing(weight_sharing, palettes, index_cost), skipped)
    kept, unpruned = match_pruning(shapes, pruning, skipped)
    skipped = note_unused(skipped, unused, unpruned)
    common = {"bits_w": bits_w, "bits_x": bits_x}
    layers = tuple(
        estimate_layer(s, sharing=sharing.get(s.name), kept_fraction=kept.get(s.name, 1.0),
                       index_cost=index_cost, compute_model=compute_model, **common)
        for s in shapes)
    settings = {"skipped": tuple(tuple(x) for x in skipped), "bits_w": bits_w,
                "bits_x": bits_x, "model_name": model_name}
    if notes:
        settings["notes"] = notes
    baseline = None
    if sharing or kept:
        baseline = EnergyReport(layers=tuple(estimate_layer(s, **common) for s in shapes),
                                **settings)
    return EnergyReport(layers=layers, index_cost=index_cost, compute_model=compute_model,
                        baseline=baseline, **settings)


def _check_report_args(skipped, model_name, notes):
    """``(skipped, notes)`` of :func:`estimate_shapes` as tuples, checked: ``skipped``
    ``(name, reason)`` pairs, ``model_name`` a str, ``notes`` strings (one str is refused:
    it was split into one note per character)."""
    if not isinstance(model_name, str):
        raise validate.invalid_type("model_name", "a str", model_name)
    for arg, value in (("skipped", skipped), ("notes", notes)):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise validate.invalid_type(arg, "a list or tuple" + (
                " of (name, reason) pairs" if arg == "skipped" else " of strings"), value)
    if not all(isinstance(x, (list, tuple)) and len(x) == 2 for x in skipped):
        raise validate.invalid("skipped", "a list of (name, reason) pairs", skipped)
    return tuple(tuple(x) for x in skipped), tuple(str(n) for n in notes)


def estimate(model_or_path, *, palettes=None, weight_sharing=None, pruning=None, bits_w=16,
             bits_x=16, index_cost="none", compute_model="conservative", input_shape=None):
    """Estimates the energy of a model from its layer shapes, with both energy models.

    Paper metric (Deep k-Means §3, eqs. 5-7, normalised so one MAC's data costs 6× its
    compute): E_l = (CC_l + κ_l·(C_W,l + C_X,l)) / FA_MAC,l ≈ 7·MACs uncompressed. Weight
    sharing shrinks |W| to the codebook (K·d), so sharing alone saves at most ≈ 1.75×.
    Hierarchy model (Eyeriss row stationary, costs DRAM 200 / buffer 6 / array 2 / RF 1,
    MAC 1); weight sharing turns DRAM and buffer weight traffic into indices + codebook.

    Args:
        model_or_path: A built Keras model (Sequential, Functional, or subclassed with
            `input_shape`), a `.keras` / `.h5` / `.tflite` path, or a sequence of
            `LayerShape` records. A path brings its own compression info when neither
            `palettes` nor `weight_sharing` is given: a palettized `.tflite` the K, d and G
            of every weight stored as codebook + indices; a `.keras` / `.h5` the palettes
            in `<stem>.palettes.json` (else `palettes.json`) beside it, else those its
            kernels hold (K distinct values or units; `energy.stored.infer_sharing`). A
            palette from such a file is applied only if its `decode()` equals the stored
            weight; the others (another model's file, another K, the float original) are
            rejected, named with the reason in `notes` (printed "REJECTED PALETTES"), and
            their layers charged as their kernels hold (`energy.stored.beside_keras_file`).
            Palettes passed as `palettes` are taken as given (a what-if estimate; a note
            names those whose `decode()` is not the model's weight), but for a name
            that layers of several nested models share (`a/fc`, `b/fc`): those are paired
            with the layer whose weight their `decode()` equals (records `fc`, `fc#2` in
            walk order; `energy.same_names_pairing`).
        palettes: Iterable of objects with `layer_name`, `n_clusters`, `unit_dim`, `n_units`
            and `entropy_bits()` (e.g. `dkm_tf.core.palette.Palette`). `entropy_bits()` is read as
            bits per index if it is ≤ log₂ K, otherwise as the total over all units. A 3-D
            `codebook` attribute (G, K, d) sets G codebooks; a `weight_name` starting with
            "depthwise"/"pointwise" selects that kernel of a separable convolution.
        weight_sharing: Mapping `{layer_name: SharingInfo}` (or a list of `SharingInfo` for
            layers with several kernels, matched by kernel size).
        pruning: Mapping `{layer_name: kept_fraction}` with fractions in (0, 1].
        bits_w: Weight bits B_w, the metric's datapath width for every weight (an int8
            `.tflite` is charged at it too; a note says the file stores int8 weights).
        bits_x: Activation bits B_x.
        index_cost: "none", "log2" or "entropy" (see `estimate_layer`), or "auto" (what
            `dkm-tf energy` uses): "entropy" where the compression info gives every clustered
            weight's index entropy, else "none", with a note saying which and why
            (`energy.index_cost`).
        compute_model: "conservative" or "unique_products"; see `estimate_layer`.
        input_shape: Input shape without the batch axis (a list / tuple / 1-D array,
            TensorShape or integer tensor of positive integers; a set, a string, floats,
            bools and open None sizes are refused); required for subclassed models and
            open input sizes (`Input((None, None, 3))`, or a `.tflite` converted from one:
            its op shapes are then read by running it once, `energy.tflite_dynamic`); else
            the model's own or None. An unbuilt Sequential of Keras's own layers is built
            as a copy (the model stays unbuilt); one holding a custom class is built in
            place at this shape (a clone rebuilt from its config may differ).

    Returns:
        An `EnergyReport` (with `baseline` set when compression information is given).

    Raises:
        ValueError: On invalid arguments, unknown layer names in the compression info (a
            layer the reader skips, e.g. an Embedding, gets a `skipped` entry saying its
            palette is not charged), a subclassed model without `input_shape`, or palettes
            of a name that layers of several nested models share (`a/fc`, `b/fc`) where
            neither their values nor kernel size tell them apart and their palettes differ
            (`energy.same_names`).

    Example:
        >>> from dkm_tf.energy import dense_shape
        >>> r = estimate([dense_shape("fc", in_features=100, units=10)],
        ...              weight_sharing={"fc": SharingInfo(n_clusters=4, unit_dim=1,
        ...                                                n_units=1000)})
        >>> round(r.reduction.paper, 3)
        1.745
    """
    check_positive("bits_w", bits_w)
    check_positive("bits_x", bits_x)
    check_choice("index_cost", index_cost, (*constants.INDEX_COSTS, AUTO))
    check_choice("compute_model", compute_model, constants.COMPUTE_MODELS)
    input_shape = validate.check_input_shape(input_shape)
    from dkm_tf.energy import stored

    shapes, skipped, name, found = _read(model_or_path, input_shape)
    notes = list(found.get("notes", ()))
    if palettes is None and weight_sharing is None:
        weight_sharing, palettes = found.get("weight_sharing"), found.get("palettes")
    elif found.get("weight_sharing") or found.get("palettes"):
        notes = ["compression info from the `palettes` / `weight_sharing` arguments; the "
                 "palettes stored with the file were not used"]
    if index_cost == AUTO:
        index_cost, why = resolve_index_cost(weight_sharing, palettes)
        notes += [why] if why else []
    if found.get("quantized"):
        ops = [s.name for s in shapes if s.kind in ("conv", "dense")]  # a file's: named
        notes.append(stored.quantized_note(
            found["quantized"], ops if "what" not in found else len(ops), bits_w, bits_x,
            found.get("what", "the file")))
    from_file = "source" in found and palettes is found.get("palettes")
    if found.get("model") is not None and palettes is not None and not from_file:
        notes += _given_palettes_note(found["model"], palettes)
    try:
        if found.get("model") is not None:  # `fc` in two nested blocks: paired by value,
            from dkm_tf.energy.same_names import check_same_names, same_name_estimate
            shapes, palettes, pruning, paired = same_name_estimate(  # else refused unless
                found["model"], shapes, palettes, pruning)  # alike
            check_same_names(found["model"], palettes, weight_sharing, index_cost, paired)
        return estimate_shapes(shapes, skipped=skipped, weight_sharing=weight_sharing,
                               palettes=palettes, pruning=pruning, bits_w=bits_w,
                               bits_x=bits_x, index_cost=index_cost,
                               compute_model=compute_model, model_name=name, notes=notes)
    except ValueError as e:
        if not from_file:
            raise
        raise ValueError(f"The palettes file {found['source']!r} beside the model does not "
                         f"describe it: {e}") from e


def energy_cli_text(path, **kwargs):
    """Text printed by `dkm-tf energy --model PATH`: `estimate(path, **kwargs).summary()`.

    Args:
        path: A `.keras` / `.h5` / `.tflite` model file (or anything `estimate` takes).
        **kwargs: Keyword arguments of `estimate`; `index_cost` defaults to "auto": the index
            entropy of the file's own compression info, the convention of `dkm-tf
            compress`'s report, where it is known (a note says which convention was used
            and why).
    """
    kwargs.setdefault("index_cost", AUTO)
    return estimate(path, **kwargs).summary()


def _given_palettes_note(model, palettes):
    """A note naming the palettes passed as `palettes` whose `decode()` is not the model's
    weight (stale after more training, another model's, the float original's): they are
    charged as given (a what-if estimate), but not without a word (`stored.check_palettes`,
    the check of a palettes file beside a `.keras`)."""
    from dkm_tf.energy import stored
    from dkm_tf.graph.copying import iter_layers

    if not isinstance(palettes, (list, tuple)):  # an iterator is read once, by the estimate
        return []
    quantized = {la.name for la in iter_layers(model) if getattr(la, "quantization_mode", None)}
    real = [p for p in palettes if hasattr(p, "decode") and hasattr(p, "weight_name")
            and p.layer_name not in quantized]  # int8 codes: the quantization note says it
    verdicts = stored.palette_verdicts(model, real) if real else []
    what_if = [(n, why) for _, n, why, kind in verdicts if kind == "float"]
    stale = [(n, why) for _, n, why, kind in verdicts if kind == "stale"]
    notes = []
    if what_if:  # the float original with its clustered copy's palettes: a what-if
        names = ", ".join(n for n, _ in what_if[:3]) + (" ..." if len(what_if) > 3 else "")
        notes.append(f"what-if: {len(what_if)} of the {len(real)} palettes passed describe "
                     f"weights this model holds as float ({names}): charged as if the model "
                     "were clustered with them; estimate the clustered model for its own figures")
    if stale:
        shown = "; ".join(f"{n}: {why}" for n, why in stale[:3])
        more = f"; and {len(stale) - 3} more" if len(stale) > 3 else ""
        notes.append(f"PALETTES NOT OF THIS MODEL'S WEIGHTS: {len(stale)} of the {len(real)} "
                     f"palettes passed do not decode to the clustered weights the model holds "
                     f"({shown}{more}); they are charged as given (their K and indices), not as "
                     "the model stores its weights, and `export.to_tflite` refuses them")
    return notes


def _read(model_or_path, input_shape):
    """`(shapes, skipped, name, found)`; `found`: compression info stored with a file."""
    from dkm_tf.energy import stored
    from dkm_tf.energy.keras_quantized import quantized_layers

    if isinstance(model_or_path, (str, os.PathLike)):
        path = os.fspath(model_or_path)
        if not os.path.exists(path):
            from dkm_tf.core.files import tilde_note

            raise FileNotFoundError(f"No such model file: {path!r}" + tilde_note(path))
        if os.path.isdir(path):
            raise ValueError("Invalid value for argument `model_or_path`. Expected a model "
                             f"file, not a folder. Received: model_or_path={path!r}")
        stored.check_file(path)
        suffix = os.path.splitext(path)[1].lower()
        if suffix == ".tflite":
            from dkm_tf.energy.tflite_reader import read_tflite_palettes

            quantized = {}
            shapes, skipped, palettes = read_tflite_palettes(path, quantized, input_shape)
            sharing, notes = stored.sharing_from_tflite(shapes, palettes)
            return shapes, skipped, os.path.basename(path), {
                "weight_sharing": sharing or None, "notes": notes, "quantized": quantized}
        if suffix in (".keras", ".h5", ".hdf5"):
            import keras

            try:
                model = keras.saving.load_model(path, compile=False)
            except Exception as e:
                raise ValueError(f"Could not load the Keras model {path!r}: "
                                 f"{type(e).__name__}: {e}") from e
            from dkm_tf.energy.keras_reader import read_keras_model

            shapes, skipped = read_keras_model(model, input_shape=input_shape)
            found = dict(stored.beside_keras_file(model, shapes, path),
                         quantized=quantized_layers(model), model=model)
            return shapes, skipped, os.path.basename(path), found
        raise ValueError(
            "Invalid value for argument `model_or_path`. Expected a path ending in "
            f"('.keras', '.h5', '.hdf5', '.tflite'). Received: model_or_path={path!r}"
        )
    if isinstance(model_or_path, (list, tuple)) and all(
            isinstance(s, LayerShape) for s in model_or_path):
        return tuple(model_or_path), (), "", {}
    from dkm_tf.energy.keras_reader import read_keras_model
    from dkm_tf.energy.unbuilt import built_copy
    from dkm_tf.graph.result_objects import check_not_a_result

    check_not_a_result(model_or_path, "model_or_path")  # a FoldResult, a (model, ...) tuple
    model = built_copy(model_or_path, input_shape)  # not the user's: it would stay built
    shapes, skipped = read_keras_model(model, input_shape=input_shape)
    return shapes, skipped, getattr(model, "name", ""), {
        "quantized": quantized_layers(model), "what": "the model", "model": model}
