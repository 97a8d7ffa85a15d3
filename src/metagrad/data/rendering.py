"""Render one character from one font into a small grayscale image, with optional affine jitter.

Rendering happens in two stages so that the expensive part is done once per (font, character):
:func:`render_glyph` rasterises the character with FreeType (through Pillow) at a supersampled
size and crops it to its ink; :func:`place_glyph` then places that crop in the output image with
an affine transform (the jitter) and averages the supersampled pixels down. White ink on black:
pixel values are ink coverage, 0 (background) to 255 (full ink).

Fonts are the TrueType files bundled with matplotlib, so nothing is downloaded. matplotlib and
Pillow are imported by the functions that use them, not with this module.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from PIL import ImageFont

_DEJAVU = tuple(
    f"DejaVu{family}{style}.ttf"
    for family, italic in (("Sans", "Oblique"), ("Serif", "Italic"), ("SansMono", "Oblique"))
    for style in ("", "-Bold", f"-{italic}", f"-Bold{italic}")
)
_STIX = ("STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf")
# Computer Modern text fonts in matplotlib's BaKoMa conversion. They use TeX's own encoding, which
# agrees with Unicode only for ASCII letters and digits (e.g. '<' is '¡' in cmr10 and '$' is '£' in
# cmti10), so only those are taken from them. cmsy10 (calligraphic capitals where 'A' should be)
# and cmex10 (big delimiters) are left out.
_COMPUTER_MODERN = (
    "cmr10.ttf",
    "cmb10.ttf",
    "cmti10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmmi10.ttf",
)
TEX_ENCODED_FONTS: frozenset[str] = frozenset(_COMPUTER_MODERN)
_ASCII_ALNUM = frozenset(map(ord, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))

#: The 22 fonts used by default: DejaVu Sans / Serif / Sans Mono and STIX General in four styles
#: each, and six Computer Modern text fonts (ASCII letters and digits only). Not used: the
#: "Display" cuts (a few dozen glyphs), STIX size variants and non-Unicode fonts (big delimiters,
#: private-use code points) and LastResort (a box per Unicode block, for every code point).
DEFAULT_FONTS: tuple[str, ...] = _DEJAVU + _STIX + _COMPUTER_MODERN


class Jitter(NamedTuple):
    """Ranges of the random affine jitter applied to each rendered instance.

    Each instance draws its parameters uniformly from these ranges (``dilate`` is a probability).
    ``Jitter(0, (1, 1), 0, 0, 0)`` renders every instance without jitter.

    Attributes:
        rotation_deg: maximum absolute rotation, in degrees.
        scale: (low, high) factor on the glyph's size.
        shear: maximum absolute horizontal shear (x += shear * y).
        shift_px: maximum absolute translation along each axis, in output pixels.
        dilate: probability of thickening the strokes by about half an output pixel.
    """

    rotation_deg: float = 10.0
    scale: tuple[float, float] = (0.85, 1.1)
    shear: float = 0.15
    shift_px: float = 2.0
    dilate: float = 0.25


NO_JITTER = Jitter(0.0, (1.0, 1.0), 0.0, 0.0, 0.0)


def font_path(font: str | Path) -> Path:
    """Path of a font given by file name (looked up in matplotlib's fonts) or by path.

    Args:
        font: a file name such as ``"DejaVuSans.ttf"`` from ``matplotlib.get_data_path()/fonts/ttf``,
            or the path of any TrueType file.

    Returns:
        The existing font file's path.

    Raises:
        FileNotFoundError: if the font exists neither as a path nor in matplotlib's font folder.
    """
    import matplotlib

    path = Path(font)
    if path.is_file():
        return path
    bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / path.name
    if bundled.is_file():
        return bundled
    raise FileNotFoundError(
        f"font {str(font)!r}: no such file, and no {path.name!r} among matplotlib's fonts in "
        f"{bundled.parent}; pass a .ttf file name from that folder or the path of a TrueType file"
    )


@functools.cache
def font_code_points(font: str | Path) -> frozenset[int]:
    """Code points that ``font`` maps to a glyph of its own, read from its character map.

    Args:
        font: a font file name or path (see :func:`font_path`).

    Returns:
        The code points in the font's Unicode character map; for TeX-encoded Computer Modern fonts
        only the ASCII letters and digits, the only code points whose glyph is the right one.
    """
    from matplotlib.ft2font import FT2Font

    path = font_path(font)
    code_points = frozenset(FT2Font(str(path)).get_charmap())
    if path.name in TEX_ENCODED_FONTS:
        code_points &= _ASCII_ALNUM
    return code_points


@functools.cache
def load_font(font: str | Path, size_px: int) -> ImageFont.FreeTypeFont:
    """Pillow font object at a pixel size, with basic (unshaped) layout.

    Basic layout rather than Raqm: a single character needs no shaping, and Raqm's presence
    differs between Pillow builds, which would make the rendering differ between machines.
    """
    from PIL import ImageFont

    return ImageFont.truetype(str(font_path(font)), size_px, layout_engine=ImageFont.Layout.BASIC)


def render_glyph(font: ImageFont.FreeTypeFont, code_point: int) -> np.ndarray | None:
    """Rasterise one character and crop it to its ink.

    Args:
        font: a Pillow font (see :func:`load_font`); its size sets the resolution.
        code_point: the character's code point.

    Returns:
        A uint8 array (height, width) of ink coverage, or None if the glyph has no ink (a blank
        glyph is as good as a missing one for a classification benchmark).
    """
    from PIL import Image, ImageDraw

    text = chr(code_point)
    left, top, right, bottom = font.getbbox(text)
    if right <= left or bottom <= top:
        return None
    pad = 2  # anti-aliasing may reach one pixel beyond the reported box
    image = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(image).text((pad - left, pad - top), text, font=font, fill=255)
    ink = image.getbbox()
    if ink is None:
        return None
    return np.asarray(image.crop(ink))


def place_glyph(
    crop: np.ndarray,
    image_size: int,
    *,
    supersample: int,
    fit: float,
    rotation_deg: float = 0.0,
    scale: float = 1.0,
    shear: float = 0.0,
    shift: tuple[float, float] = (0.0, 0.0),
    dilate: bool = False,
) -> np.ndarray:
    """Centre a rendered crop in a square image through an affine transform, then downsample.

    The crop keeps its natural size (rendered at ``supersample`` times the output resolution, so
    a dot stays smaller than a capital letter, as in handwriting) unless its longer side exceeds
    ``fit`` output pixels, in which case it is shrunk to fit: large glyphs such as box-drawing
    characters would otherwise be cut by the border.

    Args:
        crop: uint8 ink crop from :func:`render_glyph`, at ``supersample`` x output resolution.
        image_size: side of the output image, in pixels.
        supersample: resolution factor of ``crop`` relative to the output.
        fit: maximum extent of the glyph before jitter, in output pixels.
        rotation_deg: rotation about the glyph centre.
        scale: size factor applied after fitting.
        shear: horizontal shear factor.
        shift: (x, y) translation in output pixels.
        dilate: thicken strokes with a 3x3 maximum filter at the supersampled resolution.

    Returns:
        A uint8 array (image_size, image_size), white ink on black.
    """
    from PIL import Image, ImageFilter

    big = image_size * supersample
    height, width = crop.shape
    fit_scale = min(1.0, fit * supersample / max(height, width))
    angle = math.radians(rotation_deg)
    cos, sin = math.cos(angle), math.sin(angle)
    # Forward map (input crop -> output canvas): A = s * R(angle) @ [[1, shear], [0, 1]].
    s = fit_scale * scale
    a = np.array([[cos, cos * shear - sin], [sin, sin * shear + cos]]) * s
    inv = np.linalg.inv(a)
    centre_in = np.array([width / 2, height / 2])
    centre_out = np.array([big / 2 + shift[0] * supersample, big / 2 + shift[1] * supersample])
    offset = centre_in - inv @ centre_out
    # Pillow's AFFINE takes the inverse map (output pixel -> input pixel).
    coefficients = (inv[0, 0], inv[0, 1], offset[0], inv[1, 0], inv[1, 1], offset[1])
    image = Image.fromarray(crop).transform(
        (big, big),
        Image.Transform.AFFINE,
        coefficients,
        resample=Image.Resampling.BILINEAR,
        fillcolor=0,
    )
    if dilate:
        image = image.filter(ImageFilter.MaxFilter(3))
    # Averaging supersample x supersample blocks is exact area anti-aliasing.
    return np.asarray(image.reduce(supersample))
