"""`index_cost="auto"`: the index convention a model's own compression info supports.

The paper metric charges no index bits by default (`index_cost="none"`, Deep k-Means footnote
3), while `dkm-tf compress` reports the entropy-coded indices (`index_cost="entropy"`, the
paper's compression ratios). `dkm-tf energy` reads a model file with `"auto"`, so that the
file `compress` wrote gets the figures `compress` reported:

* "entropy" when every clustered weight's index entropy is known: palettes with
  `entropy_bits()` (given, or beside a `.keras`), the indices stored in a palettized `.tflite`
  (`tflite_indices`), or a `.keras` kernel's own distinct values (`stored.infer_sharing`);
* "none" otherwise, never an error: with a note naming the clustered weights whose index
  entropy is unknown (a decode chain whose indices were not read, palettes without
  `entropy_bits()`); without one where no weight is clustered (a float model, a file without
  palettes), whose figures no index convention changes: its output stays that of
  `estimate(path)`.
"""

from dkm_tf.energy.shapes import SharingInfo

AUTO = "auto"


def resolve(weight_sharing, palettes):
    """`(index_cost, note)` for `index_cost="auto"` and the compression info found (`note`
    None where nothing is clustered).

    Args:
        weight_sharing: `{name: SharingInfo or [SharingInfo, ...]}` or None.
        palettes: Palette-like objects or None.
    """
    known, unknown = [], []
    for name, info in (weight_sharing or {}).items():
        for i in (info if isinstance(info, (list, tuple)) else [info]):
            known_bits = isinstance(i, SharingInfo) and i.index_bits is not None
            (known if known_bits else unknown).append(str(name))
    for p in palettes or ():
        name = str(getattr(p, "layer_name", p))
        (known if callable(getattr(p, "entropy_bits", None)) else unknown).append(name)
    if not known and not unknown:  # no indices: every convention gives the same figures
        return "none", None
    if unknown:
        shown = ", ".join(dict.fromkeys(unknown))
        return "none", (f"index_cost='none' (auto): the entropy of the indices of {shown} is "
                        "unknown, so no index bits are charged to the paper metric (footnote "
                        "3); `dkm-tf compress` charges their entropy (index_cost='entropy')")
    return "entropy", ("index_cost='entropy' (auto): each clustered weight's indices are "
                       "charged at their entropy, read from the compression info found "
                       "(the convention of `dkm-tf compress`); the paper's own convention "
                       "charges none: estimate(..., index_cost='none')")
