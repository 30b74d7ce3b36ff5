"""Activation-map overlays for neuron cards (Fig. 6/7 of the paper).

A neuron card shows the probe images that excite a unit most, with *where* the
unit fires drawn over the image: the unit's spatial map (h x w, e.g. 48 x 29 at
block 38 of EfficientNet-B5) is upsampled bilinearly to the image, normalised
to [0, 1], coloured, and blended semi-transparently over the grey mammogram.
The blend weight grows with the activation, so the tissue stays readable where
the unit is silent.  The run step stores the PNG bytes in `neuron_images.png`.

Pure numpy + Pillow (PNG encoding only); no matplotlib.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

#: anchors of the heat colour map (dark blue -> cyan -> yellow -> red), value in [0, 1]
_ANCHORS = np.array([0.0, 0.35, 0.65, 1.0])
_COLOURS = np.array(
    [
        [30, 40, 160],
        [0, 200, 220],
        [250, 230, 40],
        [220, 30, 30],
    ],
    dtype=np.float64,
)


def upsample_bilinear(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a 2-D map with half-pixel centres and edge clamping.

    Same convention as `torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`, so the overlay sits where the network's receptive
    fields sit (align_corners=True would shift it by up to half a cell).
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"activation map must be 2-D (h, w); got shape {a.shape}")
    h, w = a.shape

    def coords(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        x = np.clip(x, 0.0, n_in - 1)
        i0 = np.floor(x).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, x - i0

    y0, y1, fy = coords(height, h)
    x0, x1, fx = coords(width, w)
    top = a[y0][:, x0] * (1 - fx) + a[y0][:, x1] * fx
    bottom = a[y1][:, x0] * (1 - fx) + a[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def normalise01(a: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant map becomes all zeros (nothing to highlight)."""
    a = np.asarray(a, dtype=np.float64)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    if hi - lo <= 1e-12:
        return np.zeros_like(a)
    return (a - lo) / (hi - lo)


def heat_colours(v: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB (float, 0..255) by piecewise-linear anchors."""
    v = np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0)
    return np.stack([np.interp(v, _ANCHORS, _COLOURS[:, c]) for c in range(3)], axis=-1)


def _grey_uint8(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3:  # tolerate RGB(A) input: average the colour channels
        img = img[..., :3].mean(axis=2)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W) grey; got shape {img.shape}")
    if img.dtype == np.uint8:
        return img
    f = np.nan_to_num(img.astype(np.float64))
    if f.max() <= 1.0 + 1e-9 and f.min() >= 0.0:  # float image in [0, 1]
        f = f * 255.0
    else:  # any other range (uint16 DICOM, z-scored tensors): stretch
        f = normalise01(f) * 255.0
    return np.clip(np.round(f), 0, 255).astype(np.uint8)


def overlay_rgb(image: np.ndarray, act_map: np.ndarray, max_alpha: float = 0.6, min_alpha: float = 0.1) -> np.ndarray:
    """RGB uint8 (H, W, 3): the grey image with the normalised activation blended over it."""
    grey = _grey_uint8(image).astype(np.float64)
    H, W = grey.shape
    heat = normalise01(upsample_bilinear(act_map, H, W))
    alpha = (min_alpha + (max_alpha - min_alpha) * heat)[..., None]
    rgb = grey[..., None] * (1 - alpha) + heat_colours(heat) * alpha
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def activation_overlay_png(image: np.ndarray, act_map: np.ndarray, size: int = 160) -> bytes:
    """PNG bytes of a thumbnail (longest side `size`) with the activation map overlaid.

    `image`: (H, W) grey, uint8 or float; `act_map`: (h, w) activations of one
    unit on that image.  The map is upsampled to the *full* image before the
    thumbnail is made, so the overlay is aligned whatever the aspect ratios.
    """
    if size < 8:
        raise ValueError(f"thumbnail size must be at least 8 pixels; got {size}")
    rgb = overlay_rgb(image, act_map)
    im = Image.fromarray(rgb, mode="RGB")
    H, W = rgb.shape[:2]
    scale = size / max(H, W)
    if scale < 1:
        im = im.resize((max(1, round(W * scale)), max(1, round(H * scale))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
