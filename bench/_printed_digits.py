"""Printed (typed) digits rendered offline from TrueType fonts: the domain of ``digitsclassifier``.

The ``digitsclassifier`` wheel recognises one *printed* digit ("gedruckte Ziffer") in a
black-on-white grayscale image; handwritten MNIST is outside that domain. This module renders
labelled printed digits from the fonts that ship with matplotlib (``mpl-data/fonts/ttf``:
DejaVu, STIX, Computer Modern) and, where present, the system's DejaVu fonts
(``/usr/share/fonts/truetype/dejavu``), no network:

- :func:`list_fonts`: the font files whose digits '0'-'9' are real digits: mapped by the cmap to
  the standard glyph names ``zero`` ... ``nine`` (so symbol fonts such as cmex10, cmsy10,
  STIXSiz*, STIXNonUni*, LastResort and the glyph-less DejaVu*Display, and cmmi10's old-style
  figures, are left out), with ten distinct, non-empty renderings;
- :func:`split_fonts`: a fixed, disjoint calibration / test split by font name (:data:`TEST_FONTS`),
  independent of which other fonts a machine has;
- :func:`printed_digits`: ``n_per_digit`` renderings per digit, 64 x 64 uint8, black ink on a
  light background, varied by a seeded ``numpy`` generator (font, size, rotation within
  +-8 degrees, position, optional stroke thickening, gray levels, optional blur and noise);
- :func:`as_digitsclassifier`: the package's own preprocessing
  (``digitsclassifier.inference.preprocess_image``, copied step by step because importing that
  module loads the model): binarise (``0 if x > 200 else 255``, so the digit turns white on
  black), crop to the bounding box, fit into 24 x 24 (``ImageOps.contain``, LANCZOS; Pillow
  resizes mode "1" images with NEAREST), centre on a black 28 x 28 canvas, divide by 255.
"""

from __future__ import annotations

import pathlib

import numpy as np

CANVAS = 64
SIZES = (20, 52)          # font size in pixels, uniform
MAX_ROTATION = 8.0        # degrees, uniform in +-MAX_ROTATION
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SYSTEM_FONT_DIRS = (pathlib.Path("/usr/share/fonts/truetype/dejavu"),)

# the test fonts (by file stem); every other usable font is a calibration font. One or two
# per typeface group, so the test spans sans, mono, serif, condensed, STIX and Computer Modern
TEST_FONTS = frozenset({
    "DejaVuSans-Oblique", "DejaVuSansMono-Bold", "DejaVuSerif", "DejaVuSerif-BoldItalic",
    "STIXGeneral", "STIXGeneralBolIta", "cmr10", "cmtt10",
    "DejaVuSansCondensed-Bold", "DejaVuSerifCondensed-Italic",   # system fonts, where present
})


def _mpl_font_dir():
    import matplotlib  # noqa: PLC0415

    return pathlib.Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _renders_digits(path):
    """True when the font maps '0'-'9' to the glyphs ``zero`` ... ``nine`` and draws ten
    distinct, non-empty digits."""
    from fontTools.ttLib import TTFont  # noqa: PLC0415
    from PIL import Image, ImageDraw, ImageFont  # noqa: PLC0415

    try:
        with TTFont(str(path), lazy=True) as tt:
            cmap = tt.getBestCmap() or {}
    except Exception:  # noqa: BLE001 (not a readable TrueType file: not usable)
        return False
    if tuple(cmap.get(0x30 + d) for d in range(10)) != DIGIT_NAMES:
        return False
    font = ImageFont.truetype(str(path), 40)
    seen = set()
    for d in "0123456789":
        im = Image.new("L", (80, 80), 255)
        ImageDraw.Draw(im).text((10, 10), d, font=font, fill=0)
        arr = np.asarray(im)
        if not (arr < 128).any():
            return False
        seen.add(arr.tobytes())
    return len(seen) == 10


def list_fonts(dirs=None):
    """Usable digit fonts, ``[Path]`` sorted by file stem, one file per stem (matplotlib's copy
    first, then the system's). ``dirs``: folders to scan (default: matplotlib's bundled fonts
    and :data:`SYSTEM_FONT_DIRS` where they exist)."""
    dirs = [_mpl_font_dir(), *SYSTEM_FONT_DIRS] if dirs is None else [pathlib.Path(d)
                                                                       for d in dirs]
    found = {}
    for folder in dirs:
        for path in sorted(folder.glob("*.ttf")) if folder.is_dir() else ():
            if path.stem not in found and _renders_digits(path):
                found[path.stem] = path
    return [found[k] for k in sorted(found)]


def split_fonts(fonts=None):
    """``(calibration fonts, test fonts)``: disjoint, by name (:data:`TEST_FONTS`), so one font
    lands on the same side whatever else is installed."""
    fonts = list_fonts() if fonts is None else [pathlib.Path(f) for f in fonts]
    test = [f for f in fonts if f.stem in TEST_FONTS]
    calib = [f for f in fonts if f.stem not in TEST_FONTS]
    if not calib or not test:
        raise ValueError("Invalid value for argument `fonts`. Expected usable digit fonts on "
                         f"both sides of the split (test fonts: {sorted(TEST_FONTS)}). Received: "
                         f"fonts={[f.name for f in fonts]}")
    return calib, test


def _render(font_path, digit, rng):
    """One 64 x 64 uint8 rendering of ``digit`` (black-ish ink on a light background)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont  # noqa: PLC0415

    size = int(rng.integers(SIZES[0], SIZES[1] + 1))
    font = ImageFont.truetype(str(font_path), size)
    stroke = int(rng.random() < 0.25) if size >= 32 else 0     # thicker print, sometimes
    paper = int(rng.integers(225, 256))                        # background, > 200 after noise
    ink = int(rng.integers(0, 101))
    big = Image.new("L", (2 * CANVAS, 2 * CANVAS), paper)      # room to rotate without clipping
    draw = ImageDraw.Draw(big)
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font, stroke_width=stroke)
    c = CANVAS  # glyph centred on the big canvas' centre
    draw.text((c - (left + right) / 2, c - (top + bottom) / 2), str(digit), font=font,
              fill=ink, stroke_width=stroke, stroke_fill=ink)
    angle = float(rng.uniform(-MAX_ROTATION, MAX_ROTATION))
    big = big.rotate(angle, resample=Image.BICUBIC, fillcolor=paper)
    box = big.point(lambda v: 255 if v < paper - 8 else 0).getbbox() or (c, c, c + 1, c + 1)
    w, h = box[2] - box[0], box[3] - box[1]
    margin = 3
    # position jitter: anywhere the digit fits with a small margin
    x0 = box[0] - int(rng.integers(margin, max(margin, CANVAS - w - margin) + 1))
    y0 = box[1] - int(rng.integers(margin, max(margin, CANVAS - h - margin) + 1))
    im = big.crop((x0, y0, x0 + CANVAS, y0 + CANVAS))
    if rng.random() < 0.5:
        im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    arr = np.asarray(im, np.float32)
    if rng.random() < 0.5:
        arr = arr + rng.normal(0.0, float(rng.uniform(0.5, 3.0)), arr.shape)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def printed_digits(n_per_digit, *, fonts, seed):
    """``(x, y)``: ``10 * n_per_digit`` printed digits, ``x`` uint8 ``(n, 64, 64)`` black on
    white, ``y`` int64 labels, in a seeded random order. Each digit is rendered
    ``n_per_digit`` times, cycling through ``fonts`` (so every font draws every digit about
    equally often); size, rotation, position, stroke, gray levels, blur and noise are drawn
    from ``numpy.random.default_rng(seed)``. Deterministic for a given seed and font list."""
    fonts = [pathlib.Path(f) for f in fonts]
    if not fonts:
        raise ValueError("Invalid value for argument `fonts`. Expected a non-empty list of "
                         f"TrueType files. Received: fonts={fonts}")
    if int(n_per_digit) != n_per_digit or n_per_digit < 1:
        raise ValueError("Invalid value for argument `n_per_digit`. Expected a positive "
                         f"integer. Received: n_per_digit={n_per_digit!r}")
    rng = np.random.default_rng(seed)
    x, y = [], []
    for j in range(int(n_per_digit)):
        for d in range(10):
            x.append(_render(fonts[(j + d) % len(fonts)], d, rng))
            y.append(d)
    order = rng.permutation(len(x))
    return np.stack(x)[order], np.asarray(y, np.int64)[order]


def as_digitsclassifier(images):
    """``(n, 28, 28, 1)`` float32 in [0, 1], white digit on black: exactly
    ``digitsclassifier.inference.preprocess_image`` applied to each black-on-white image."""
    from PIL import Image, ImageOps  # noqa: PLC0415

    images = np.asarray(images)
    out = np.zeros((len(images), 28, 28, 1), np.float32)
    for i, image in enumerate(images):
        bw = Image.fromarray(image).convert("L").point(lambda v: 0 if v > 200 else 255,
                                                       mode="1")
        box = bw.getbbox()
        if box is None:
            raise ValueError(f"Invalid value for argument `images`. Expected a dark digit "
                             f"(pixels <= 200) on a light background. Received: image {i} "
                             "has no pixel <= 200")
        small = ImageOps.contain(bw.crop(box), (24, 24), method=Image.LANCZOS)
        canvas = Image.new("L", (28, 28), 0)
        canvas.paste(small, ((28 - small.width) // 2, (28 - small.height) // 2))
        out[i, ..., 0] = np.asarray(canvas, np.float32) / 255.0
    return out
