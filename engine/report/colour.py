"""Colour science for the report's palettes: contrast, colour-vision deficiency, colour difference.

Why here: the report promises that its colours are readable (WCAG 2.x
contrast for text) and stay distinguishable for the ~6% of men with a
red-green deficiency.  Those promises are checked, not assumed: charts.py
asks this module, and the tests check the palettes with it.

- contrast: WCAG 2.x relative luminance and contrast ratio (W3C, "Web Content
  Accessibility Guidelines 2.1", definitions of relative luminance / contrast ratio);
- simulation: Machado, Oliveira & Fernandes (2009), "A physiologically-based model
  for simulation of color vision deficiency", IEEE TVCG 15(6), severity-1.0
  matrices, applied to linear sRGB;
- difference: CIEDE2000 (Sharma, Wu & Dalal 2005, "The CIEDE2000 color-difference
  formula: implementation notes..."), on CIELAB with the D65 white point.
"""

from __future__ import annotations

import math

import numpy as np

RGB = tuple[float, float, float]
LAB = tuple[float, float, float]

#: Machado et al. 2009, Table 1, severity 1.0 (linear RGB -> simulated linear RGB)
MACHADO_2009: dict[str, np.ndarray] = {
    "protanopia": np.array(
        [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]]
    ),
    "deuteranopia": np.array(
        [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]]
    ),
    "tritanopia": np.array(
        [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]]
    ),
}

#: sRGB (D65) linear RGB -> XYZ, IEC 61966-2-1
_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_D65 = (0.95047, 1.0, 1.08883)


def hex_to_rgb(colour: str) -> RGB:
    """'#rrggbb' (or '#rgb') -> sRGB components in [0, 1]."""
    h = colour.strip().lstrip("#")
    if len(h) == 3:
        h = "".join(ch * 2 for ch in h)
    if len(h) != 6:
        raise ValueError(f"not a #rrggbb colour: {colour!r}")
    return (int(h[0:2], 16) / 255.0, int(h[2:4], 16) / 255.0, int(h[4:6], 16) / 255.0)


def rgb_to_hex(rgb: RGB) -> str:
    return "#" + "".join(f"{round(min(1.0, max(0.0, c)) * 255):02x}" for c in rgb)


def to_linear(c: float) -> float:
    """sRGB transfer function inverse (the exact IEC 61966-2-1 form; WCAG 2.x quotes 0.03928, same result)."""
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def from_linear(c: float) -> float:
    c = min(1.0, max(0.0, c))
    return 12.92 * c if c <= 0.0031308 else 1.055 * c ** (1 / 2.4) - 0.055


def relative_luminance(colour: str) -> float:
    r, g, b = (to_linear(c) for c in hex_to_rgb(colour))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(fg: str, bg: str = "#ffffff") -> float:
    """WCAG 2.x contrast ratio (L1 + 0.05) / (L2 + 0.05), from 1 to 21."""
    a, b = relative_luminance(fg), relative_luminance(bg)
    hi, lo = max(a, b), min(a, b)
    return (hi + 0.05) / (lo + 0.05)


def simulate(colour: str, deficiency: str = "deuteranopia") -> str:
    """How `colour` looks with a complete (severity 1.0) deficiency, as an sRGB hex colour."""
    m = MACHADO_2009[deficiency]
    lin = np.array([to_linear(c) for c in hex_to_rgb(colour)])
    out = m @ lin
    r, g, b = (from_linear(float(c)) for c in out)
    return rgb_to_hex((r, g, b))


def to_lab(colour: str) -> LAB:
    """CIELAB (D65) of an sRGB colour."""
    lin = np.array([to_linear(c) for c in hex_to_rgb(colour)])
    xyz = _RGB_TO_XYZ @ lin

    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    fx, fy, fz = (f(float(v) / w) for v, w in zip(xyz, _D65))
    return (116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz))


def delta_e2000(lab1: LAB, lab2: LAB) -> float:
    """CIEDE2000 colour difference (kL = kC = kH = 1), following Sharma et al. 2005 step by step."""
    l1, a1, b1 = lab1
    l2, a2, b2 = lab2
    c_bar = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(c_bar**7 / (c_bar**7 + 25**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = math.hypot(a1p, b1), math.hypot(a2p, b2)
    h1p = math.degrees(math.atan2(b1, a1p)) % 360 if c1p else 0.0
    h2p = math.degrees(math.atan2(b2, a2p)) % 360 if c2p else 0.0
    dlp, dcp = l2 - l1, c2p - c1p
    if c1p * c2p == 0:
        dhp = 0.0
    elif abs(h2p - h1p) <= 180:
        dhp = h2p - h1p
    else:
        dhp = h2p - h1p - 360 if h2p > h1p else h2p - h1p + 360
    dHp = 2 * math.sqrt(c1p * c2p) * math.sin(math.radians(dhp / 2))
    lbp, cbp = (l1 + l2) / 2, (c1p + c2p) / 2
    if c1p * c2p == 0:
        hbp = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        hbp = (h1p + h2p) / 2
    else:
        hbp = (h1p + h2p + 360) / 2 if h1p + h2p < 360 else (h1p + h2p - 360) / 2
    t = (
        1
        - 0.17 * math.cos(math.radians(hbp - 30))
        + 0.24 * math.cos(math.radians(2 * hbp))
        + 0.32 * math.cos(math.radians(3 * hbp + 6))
        - 0.20 * math.cos(math.radians(4 * hbp - 63))
    )
    d_theta = 30 * math.exp(-(((hbp - 275) / 25) ** 2))
    rc = 2 * math.sqrt(cbp**7 / (cbp**7 + 25**7))
    sl = 1 + 0.015 * (lbp - 50) ** 2 / math.sqrt(20 + (lbp - 50) ** 2)
    sc = 1 + 0.045 * cbp
    sh = 1 + 0.015 * cbp * t
    rt = -math.sin(math.radians(2 * d_theta)) * rc
    return math.sqrt((dlp / sl) ** 2 + (dcp / sc) ** 2 + (dHp / sh) ** 2 + rt * (dcp / sc) * (dHp / sh))


def difference(c1: str, c2: str, deficiency: str | None = None) -> float:
    """CIEDE2000 between two sRGB colours, as seen with `deficiency` (None: normal vision)."""
    if deficiency:
        c1, c2 = simulate(c1, deficiency), simulate(c2, deficiency)
    return delta_e2000(to_lab(c1), to_lab(c2))


def darken_to_contrast(colour: str, minimum: float = 4.5, background: str = "#ffffff") -> str:
    """The same hue, darkened just enough (scaling linear RGB) to reach `minimum` contrast on `background`.

    Why: word-cloud text is drawn in its category's colour; a light colour is
    legible as a bar but not as 9-px text, so text gets the darkest-needed shade.
    """
    if contrast_ratio(colour, background) >= minimum:
        return colour
    lin = [to_linear(c) for c in hex_to_rgb(colour)]
    lo, hi = 0.0, 1.0  # scale factor: lo always meets the minimum (black), hi does not
    for _ in range(40):
        mid = (lo + hi) / 2
        cand = rgb_to_hex(tuple(from_linear(c * mid) for c in lin))  # type: ignore[arg-type]
        if contrast_ratio(cand, background) >= minimum:
            lo = mid
        else:
            hi = mid
    out = rgb_to_hex(tuple(from_linear(c * lo) for c in lin))  # type: ignore[arg-type]
    return out
