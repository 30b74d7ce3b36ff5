"""Procedural mammogram phantoms with known ground truth.

Why: the embedded demo must run offline from a fresh clone, and the calibration
bench needs images whose content is *known*.  A phantom is made in two pure
steps:

1. `sample_scene(seed, index)` draws a `Scene` -- view, laterality, density and
   every planted finding with its geometry -- from a generator seeded by
   (seed, index) only, so attributes never depend on image size and any item of
   a probe can be produced alone, in any order.
2. `render(scene, height)` paints it with vectorised numpy at any height (width
   follows Mammo-CLIP's 1520x912 aspect).  Texture randomness comes from the
   scene's own render seed, so rendering is deterministic as well.

Geometry lives in "chest-wall coordinates" measured in image heights: `u` is the
distance from the chest wall, `y` the distance from the top.  Right breasts are
mirrored at the end (chest wall on the right, as in native VinDr PNGs).

These are cartoons of mammograms, not simulations of x-ray physics: they carry
the shapes and textures a radiologist would name (BI-RADS lexicon), nothing more.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image

from dissect_study.engine.phantom.vocabulary import (
    BENIGN_CALCS,
    CALC_DISTRIBUTIONS,
    MASS_DENSITIES,
    MASS_MARGINS,
    MASS_SHAPES,
    SUSPICIOUS_CALCS,
)

ASPECT = 912 / 1520  # width / height of Mammo-CLIP's PNGs
#: the pixel size every "px" constant below refers to (image height 160)
REF_HEIGHT = 160
#: bump when a change alters pixels but not the attributes: it is part of the phantom
#: probe's identity (cached activations) and of the demo models' cache keys
RENDER_VERSION = 2

#: prevalence of each planted finding (kept high so small probes contain them all)
PREVALENCE = {
    "mass": 0.30,
    "suspicious_calc": 0.25,
    "benign_calc": 0.12,
    "architectural_distortion": 0.10,
    "asymmetry": 0.12,
    "lymph_node": 0.12,
    "skin_thickening": 0.08,
    "implant": 0.05,
    "skin_marker": 0.12,
}
DENSITY_PROBS = {"A": 0.15, "B": 0.35, "C": 0.35, "D": 0.15}
#: fraction of the breast area covered by fibroglandular tissue per density class
DENSITY_FRACTION = {"A": 0.06, "B": 0.22, "C": 0.48, "D": 0.75}
#: the nipple in profile: a nub of this radius (image heights), centred this far beyond the
#: outline's anterior end, at this grey level.  Why so marked: the outline's own wobble moves
#: the edge by a few pixels at 160 px, so a skin-grey nub of radius 0.022 (the first rendering)
#: was no cue at all -- a CNN trained on the nipple alone stayed at chance (held-out AUC 0.48
#: after 480 steps) and learned this one in 60 (0.996)
NIPPLE_RADIUS, NIPPLE_OFFSET, NIPPLE_GREY = 0.03, 0.012, 0.6
#: peak grey level an asymmetry adds to the tissue: at 0.16 (the first rendering) it was lost in
#: the fibroglandular texture (the demo dissector's zero-shot AUC: focal 0.60, global 0.81)
ASYMMETRY_GREY = 0.22


def width_for(height: int) -> int:
    return int(round(height * ASPECT))


# --------------------------------------------------------------------------- scene
@dataclass
class Breast:
    a: float  # depth (chest wall -> nipple), image heights
    b: float  # half-height of the outline
    cy: float  # vertical centre
    tilt: float  # radians, MLO only
    wobble: list[float]  # outline harmonics (amplitude, phase) pairs
    pect_w: float  # pectoral muscle: width at the top (0 = none)
    pect_h: float  # pectoral muscle: height at the chest wall
    skin: float  # skin thickness, image heights

    def nipple(self) -> tuple[float, float]:
        return self.a * math.cos(self.tilt), self.cy + self.a * math.sin(self.tilt)


@dataclass
class Finding:
    kind: str  # mass | calcification | distortion | asymmetry | lymph_node | implant | skin_marker
    u: float
    y: float
    size: float  # characteristic radius, image heights
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scene:
    seed: int
    index: int
    view: str
    laterality: str
    density: str
    breast: Breast
    findings: list[Finding]
    attributes: dict[str, Any]
    render_seed: int


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), stream])


_T = TypeVar("_T")


def _choice(rng: np.random.Generator, options: Sequence[_T], p: list[float] | None = None) -> _T:
    return options[int(rng.choice(len(options), p=p))]


def _inside(breast: Breast, view: str, u: float, y: float) -> float:
    """Normalised radius of a point (< 1 inside the outline), ignoring wobble."""
    c, s = math.cos(breast.tilt), math.sin(breast.tilt)
    dy = y - breast.cy
    p = u * c + dy * s
    q = -u * s + dy * c
    return math.hypot(p / breast.a, q / breast.b)


def _place(
    rng: np.random.Generator, breast: Breast, view: str, rho: tuple[float, float], margin: float = 0.0
) -> tuple[float, float]:
    """A random point well inside the breast (and off the pectoral muscle)."""
    for _ in range(200):
        r = rng.uniform(*rho)
        t = rng.uniform(-1.25, 1.25)
        p, q = breast.a * r * math.cos(t), breast.b * r * math.sin(t)
        c, s = math.cos(breast.tilt), math.sin(breast.tilt)
        u, y = p * c - q * s, breast.cy + p * s + q * c
        if u < 0.06 + margin or not (margin + 0.02 < y < 1 - margin - 0.02) or u > ASPECT - 0.03:
            continue
        if breast.pect_w > 0 and u < breast.pect_w * (1 - y / breast.pect_h) + margin:
            continue
        return u, y
    return breast.a * 0.5, breast.cy


def _calc_specks(
    rng: np.random.Generator, breast: Breast, view: str, morphology: str, distribution: str
) -> tuple[list[list[float]], float, float]:
    """Centres (u, y) of calcification specks for a distribution; returns (specks, cu, cy)."""
    nu, ny = breast.nipple()
    if distribution == "diffuse":
        n = int(rng.integers(25, 45))
        spots = [_place(rng, breast, view, (0.1, 0.9)) for _ in range(n)]
        cu, cy = float(np.mean([p[0] for p in spots])), float(np.mean([p[1] for p in spots]))
        return [list(p) for p in spots], cu, cy
    cu, cy = _place(rng, breast, view, (0.25, 0.7), margin=0.03)
    pts: np.ndarray
    if distribution == "grouped":
        n, rad = int(rng.integers(6, 14)), rng.uniform(0.018, 0.03)
        ang = rng.uniform(0, 2 * np.pi, n)
        rr = rad * np.sqrt(rng.uniform(0, 1, n))
        pts = np.stack([cu + rr * np.cos(ang), cy + rr * np.sin(ang)], 1)
    elif distribution == "regional":
        n, rad = int(rng.integers(18, 32)), rng.uniform(0.08, 0.12)
        ang = rng.uniform(0, 2 * np.pi, n)
        rr = rad * np.sqrt(rng.uniform(0, 1, n))
        pts = np.stack([cu + 0.8 * rr * np.cos(ang), cy + rr * np.sin(ang)], 1)
    elif distribution == "linear":
        n, length = int(rng.integers(7, 13)), rng.uniform(0.08, 0.13)
        th = math.atan2(ny - cy, nu - cu) + rng.uniform(-0.5, 0.5)
        t = np.sort(rng.uniform(-0.5, 0.5, n)) * length
        jit = rng.normal(0, 0.003, n)
        pts = np.stack([cu + t * math.cos(th) - jit * math.sin(th), cy + t * math.sin(th) + jit * math.cos(th)], 1)
    else:  # segmental: a wedge pointing at the nipple (a duct and its branches)
        n, length = int(rng.integers(14, 26)), rng.uniform(0.14, 0.2)
        th = math.atan2(ny - cy, nu - cu)
        t = rng.uniform(0, 1, n) * length
        spread = rng.uniform(-1, 1, n) * (0.01 + 0.25 * (length - t))
        base_u, base_y = cu - 0.5 * length * math.cos(th), cy - 0.5 * length * math.sin(th)
        pts = np.stack(
            [base_u + t * math.cos(th) - spread * math.sin(th), base_y + t * math.sin(th) + spread * math.cos(th)], 1
        )
    if morphology == "popcorn":  # few, large
        pts = pts[: max(2, min(len(pts), int(rng.integers(3, 7))))]
    pts[:, 0] = np.clip(pts[:, 0], 0.05, ASPECT - 0.03)
    pts[:, 1] = np.clip(pts[:, 1], 0.03, 0.97)
    return pts.tolist(), float(cu), float(cy)


def _location(breast: Breast, view: str, laterality: str, u: float, y: float) -> str:
    """A radiologist-style location phrase for a finding position."""
    rel = (y - breast.cy) / breast.b
    depth = "anterior" if u > 0.66 * breast.a else ("middle" if u > 0.33 * breast.a else "posterior")
    if abs(rel) < 0.15:
        side = "central"
    elif view == "MLO":
        side = "upper" if rel < 0 else "lower"
    else:  # CC: top of the image is lateral (outer) for both sides in native orientation
        side = "outer" if rel < 0 else "inner"
    return f"{side} {depth}"


def sample_scene(seed: int, index: int) -> Scene:
    """Draw phantom number `index` of the stream `seed` (pure function of both)."""
    rng = _rng(seed, index, 0)
    view = _choice(rng, ("CC", "MLO"))
    laterality = _choice(rng, ("L", "R"))
    density = _choice(rng, list(DENSITY_PROBS), list(DENSITY_PROBS.values()))
    if view == "CC":
        breast = Breast(
            a=rng.uniform(0.42, 0.52),
            b=rng.uniform(0.36, 0.45),
            cy=rng.uniform(0.46, 0.54),
            tilt=0.0,
            wobble=rng.normal(0, 0.02, 6).tolist(),
            pect_w=0.0,
            pect_h=1.0,
            skin=0.007,
        )
        if rng.random() < 0.25:  # pectoral muscle seen at the chest wall on some CC views
            breast.pect_w, breast.pect_h = rng.uniform(0.04, 0.07), 2.0
    else:
        breast = Breast(
            a=rng.uniform(0.44, 0.53),
            b=rng.uniform(0.5, 0.6),
            cy=rng.uniform(0.45, 0.52),
            tilt=rng.uniform(0.05, 0.2),
            wobble=rng.normal(0, 0.02, 6).tolist(),
            pect_w=rng.uniform(0.22, 0.32),
            pect_h=rng.uniform(0.5, 0.7),
            skin=0.007,
        )
    nipple_in_profile = bool(rng.random() < 0.8)
    pect = breast.pect_w > 0
    findings: list[Finding] = []
    attrs: dict[str, Any] = {
        "view": view,
        "laterality": laterality,
        "density": density,
        "mass": False,
        "calcification": False,
        "benign_calcification": False,
        "mass_shape": None,
        "mass_margin": None,
        "mass_density": None,
        "calc_morphology": None,
        "calc_distribution": None,
        "architectural_distortion": False,
        "asymmetry": None,
        "lymph_node": None,
        "skin_thickening": False,
        "implant": False,
        "skin_marker": False,
        "pectoral_muscle": pect,
        "nipple_in_profile": nipple_in_profile,
    }
    locations: dict[str, str] = {}

    if rng.random() < PREVALENCE["implant"]:
        attrs["implant"] = True
        findings.append(
            Finding("implant", 0.0, breast.cy, 0.0, {"ru": rng.uniform(0.2, 0.27), "ry": rng.uniform(0.22, 0.3)})
        )
    if rng.random() < PREVALENCE["mass"]:
        shape, margin = _choice(rng, MASS_SHAPES), _choice(rng, MASS_MARGINS)
        mdens = _choice(rng, MASS_DENSITIES, [0.35, 0.35, 0.15, 0.15])
        u, y = _place(rng, breast, view, (0.25, 0.7), margin=0.04)
        params: dict[str, Any] = {
            "shape": shape,
            "margin": margin,
            "density": mdens,
            "ecc": rng.uniform(0.55, 0.72) if shape == "oval" else rng.uniform(0.92, 1.0),
            "psi": rng.uniform(0, np.pi),
            "harm": rng.uniform(0.1, 0.18, 4).tolist() if shape == "irregular" else [0.0] * 4,
            "phase": rng.uniform(0, 2 * np.pi, 6).tolist(),
            "spicules": (
                rng.uniform(0, 2 * np.pi, int(rng.integers(9, 15))).tolist() if margin == "spiculated" else []
            ),
            "spicule_len": rng.uniform(0.8, 1.6, 15).tolist(),
        }
        size = rng.uniform(0.035, 0.06)
        findings.append(Finding("mass", u, y, size, params))
        attrs.update(mass=True, mass_shape=shape, mass_margin=margin, mass_density=mdens)
        locations["mass"] = _location(breast, view, laterality, u, y)
    calc_roll = rng.random()
    if calc_roll < PREVALENCE["suspicious_calc"] + PREVALENCE["benign_calc"]:
        suspicious = calc_roll < PREVALENCE["suspicious_calc"]
        morph = _choice(rng, SUSPICIOUS_CALCS if suspicious else BENIGN_CALCS)
        dists = CALC_DISTRIBUTIONS if suspicious else ("diffuse", "regional", "grouped")
        dist = _choice(rng, dists)
        specks, cu, cy = _calc_specks(rng, breast, view, morph, dist)
        findings.append(
            Finding(
                "calcification",
                cu,
                cy,
                0.0,
                {
                    "morphology": morph,
                    "distribution": dist,
                    "specks": specks,
                    "jitter": rng.uniform(0, 1, (len(specks), 4)).tolist(),
                },
            )
        )
        attrs.update(calc_morphology=morph, calc_distribution=dist)
        attrs["calcification" if suspicious else "benign_calcification"] = True
        locations["calcification"] = _location(breast, view, laterality, cu, cy)
    if rng.random() < PREVALENCE["architectural_distortion"]:
        u, y = _place(rng, breast, view, (0.25, 0.7), margin=0.05)
        n = int(rng.integers(10, 16))
        findings.append(
            Finding(
                "distortion",
                u,
                y,
                rng.uniform(0.06, 0.1),
                {"angles": (rng.uniform(0, 2 * np.pi, n)).tolist(), "lengths": rng.uniform(0.5, 1.0, n).tolist()},
            )
        )
        attrs["architectural_distortion"] = True
        locations["architectural_distortion"] = _location(breast, view, laterality, u, y)
    if rng.random() < PREVALENCE["asymmetry"]:
        kind = _choice(rng, ("focal", "global"), [0.6, 0.4])
        u, y = _place(rng, breast, view, (0.3, 0.6), margin=0.04)
        size = rng.uniform(0.05, 0.07) if kind == "focal" else rng.uniform(0.13, 0.17)
        findings.append(Finding("asymmetry", u, y, size, {"kind": kind}))
        attrs["asymmetry"] = kind
        locations["asymmetry"] = _location(breast, view, laterality, u, y)
    if rng.random() < PREVALENCE["lymph_node"]:
        kind = _choice(rng, ("intramammary", "axillary"), [0.5, 0.5]) if view == "MLO" else "intramammary"
        if kind == "axillary":
            y = rng.uniform(0.06, 0.16)
            u = rng.uniform(0.3, 0.7) * breast.pect_w * (1 - y / breast.pect_h)
            size = rng.uniform(0.025, 0.035)
        else:
            u, y = _place(rng, breast, view, (0.35, 0.75), margin=0.03)
            size = rng.uniform(0.014, 0.022)
        findings.append(
            Finding(
                "lymph_node",
                u,
                y,
                size,
                {"kind": kind, "psi": rng.uniform(0, np.pi), "hilum": rng.uniform(0, 2 * np.pi)},
            )
        )
        attrs["lymph_node"] = kind
        locations["lymph_node"] = _location(breast, view, laterality, u, y)
    if rng.random() < PREVALENCE["skin_thickening"]:
        attrs["skin_thickening"] = True
        breast.skin = rng.uniform(0.018, 0.026)
    if rng.random() < PREVALENCE["skin_marker"]:
        t = rng.uniform(-1.0, 1.0)
        c, s = math.cos(breast.tilt), math.sin(breast.tilt)
        p, q = breast.a * math.cos(t), breast.b * math.sin(t)
        u, y = p * c - q * s, breast.cy + p * s + q * c
        y = min(max(y, 0.05), 0.95)
        findings.append(Finding("skin_marker", u, y, rng.uniform(0.01, 0.014)))
        attrs["skin_marker"] = True

    attrs["birads"] = _birads(attrs)
    attrs["findings"] = _finding_names(attrs)
    attrs["locations"] = locations
    attrs["quadrant"] = next(iter(locations.values()), None)
    return Scene(seed, index, view, laterality, density, breast, findings, attrs, int(rng.integers(0, 2**31 - 1)))


def _birads(a: dict[str, Any]) -> int:
    """A plausible BI-RADS assessment from the planted findings (not a clinical rule)."""
    score = 1
    if a["benign_calcification"] or a["lymph_node"] or a["implant"]:
        score = 2
    if a["asymmetry"] == "global" or a["skin_thickening"]:
        score = max(score, 3)
    if a["mass"]:
        if a["mass_margin"] == "spiculated" or (a["mass_shape"] == "irregular" and a["mass_margin"] == "indistinct"):
            score = 5
        elif a["mass_margin"] == "circumscribed" and a["mass_shape"] != "irregular":
            score = max(score, 2 if a["mass_density"] == "fat" else 3)
        else:
            score = max(score, 4)
    if a["calcification"]:
        fine = a["calc_morphology"] in ("fine linear", "fine pleomorphic")
        score = max(score, 5 if fine and a["calc_distribution"] in ("linear", "segmental") else 4)
    if a["architectural_distortion"] or a["asymmetry"] == "focal":
        score = max(score, 4)
    return score


def _finding_names(a: dict[str, Any]) -> list[str]:
    """VinDr finding categories where they exist, phantom names otherwise."""
    names = []
    if a["mass"]:
        names.append("Mass")
    if a["calcification"]:
        names.append("Suspicious Calcification")
    if a["benign_calcification"]:
        names.append("Benign Calcification")
    if a["architectural_distortion"]:
        names.append("Architectural Distortion")
    if a["asymmetry"]:
        names.append("Focal Asymmetry" if a["asymmetry"] == "focal" else "Global Asymmetry")
    if a["lymph_node"]:
        names.append("Intramammary Lymph Node" if a["lymph_node"] == "intramammary" else "Axillary Lymph Node")
    if a["skin_thickening"]:
        names.append("Skin Thickening")
    if a["implant"]:
        names.append("Implant")
    if a["skin_marker"]:
        names.append("Skin Marker")
    return names or ["No Finding"]


# --------------------------------------------------------------------------- boxes
def finding_boxes(scene: Scene, height: int) -> dict[str, list[int]]:
    """Pixel boxes [x0, y0, x1, y1] (inclusive-exclusive) of each planted finding at `height`."""
    width = width_for(height)
    boxes: dict[str, list[int]] = {}

    def put(name: str, u0: float, y0: float, u1: float, y1: float) -> None:
        x0, x1 = u0 * height, u1 * height
        if scene.laterality == "R":
            x0, x1 = width - x1, width - x0
        box = [
            int(max(0, math.floor(x0))),
            int(max(0, math.floor(y0 * height))),
            int(min(width, math.ceil(x1))),
            int(min(height, math.ceil(y1 * height))),
        ]
        boxes[name] = box

    pad = 2.5 / height
    for f in scene.findings:
        if f.kind == "mass":
            p = f.params
            ext = f.size * (
                1.25
                + sum(p["harm"])
                + 0.15
                + (max(p["spicule_len"]) if p["spicules"] else 0.0)
                + (0.6 if p["margin"] in ("indistinct", "obscured") else 0)
            )
            put("mass", f.u - ext, f.y - ext, f.u + ext, f.y + ext)
        elif f.kind == "calcification":
            pts = np.asarray(f.params["specks"])
            put(
                "calcification",
                pts[:, 0].min() - pad - 0.012,
                pts[:, 1].min() - pad - 0.012,
                pts[:, 0].max() + pad + 0.012,
                pts[:, 1].max() + pad + 0.012,
            )
        elif f.kind == "distortion":
            put("architectural_distortion", f.u - f.size, f.y - f.size, f.u + f.size, f.y + f.size)
        elif f.kind == "asymmetry":
            put("asymmetry", f.u - 2 * f.size, f.y - 2 * f.size, f.u + 2 * f.size, f.y + 2 * f.size)
        elif f.kind == "lymph_node":
            put("lymph_node", f.u - 1.3 * f.size, f.y - 1.3 * f.size, f.u + 1.3 * f.size, f.y + 1.3 * f.size)
        elif f.kind == "skin_marker":
            put("skin_marker", f.u - f.size - pad, f.y - f.size - pad, f.u + f.size + pad, f.y + f.size + pad)
        elif f.kind == "implant":
            put("implant", 0.0, f.y - f.params["ry"], f.params["ru"], f.y + f.params["ry"])
    return boxes


def scene_attributes(scene: Scene, height: int) -> dict[str, Any]:
    """The JSON-able ground truth of a scene at a given image height."""
    attrs = dict(scene.attributes)
    attrs["boxes"] = finding_boxes(scene, height)
    attrs["phantom_seed"] = scene.seed
    attrs["phantom_index"] = scene.index
    return attrs


# --------------------------------------------------------------------------- render
def _noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Smooth value noise: a coarse Gaussian grid upsampled bicubically (fast, vectorised)."""
    gh = max(2, cells)
    gw = max(2, int(round(cells * w / h)))
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)


def _fbm(rng: np.random.Generator, h: int, w: int, octaves: tuple[int, ...], gain: float = 0.6) -> np.ndarray:
    out = np.zeros((h, w), np.float32)
    amp = 1.0
    for cells in octaves:
        out += amp * _noise(rng, h, w, cells)
        amp *= gain
    return out / (out.std() + 1e-6)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


class _Grid(Protocol):
    """What the drawing helpers read from a canvas: a whole `_Canvas` or a `_Sub` window of one."""

    h: int
    px: float
    s: float
    u: np.ndarray
    y: np.ndarray

    def window(self, u: float, y: float, radius: float) -> tuple[slice, slice]: ...


class _Canvas:
    """Chest-wall-coordinate grids for one render (units: image heights)."""

    def __init__(self, height: int):
        self.h = height
        self.w = width_for(height)
        self.px = 1.0 / height  # one pixel in image heights
        self.s = height / REF_HEIGHT  # pixel-scale factor for pixel-sized details
        yy, uu = np.mgrid[0 : self.h, 0 : self.w].astype(np.float32)
        self.y = (yy + 0.5) / height
        self.u = (uu + 0.5) / height

    def window(self, u: float, y: float, radius: float) -> tuple[slice, slice]:
        r = radius * self.h + 2
        cu, cy = u * self.h, y * self.h
        return (
            slice(max(0, int(cy - r)), min(self.h, int(cy + r) + 1)),
            slice(max(0, int(cu - r)), min(self.w, int(cu + r) + 1)),
        )


def _breast_radius(c: _Canvas, breast: Breast) -> np.ndarray:
    """Normalised radius field: < 1 inside the breast outline (with a wobbly edge)."""
    cs, sn = math.cos(breast.tilt), math.sin(breast.tilt)
    dy = c.y - breast.cy
    p = c.u * cs + dy * sn
    q = -c.u * sn + dy * cs
    r = np.sqrt((p / breast.a) ** 2 + (q / breast.b) ** 2)
    th = np.arctan2(q / breast.b, p / breast.a)
    wob = np.zeros_like(r)
    for k in range(3):
        wob += breast.wobble[2 * k] * np.cos((k + 2) * th + 10 * breast.wobble[2 * k + 1])
    return r * (1 + wob)


def _stamp(
    img: np.ndarray, c: _Canvas, u: float, y: float, sig_major: float, sig_minor: float, angle: float, amp: float
) -> None:
    """Add an elliptical Gaussian (sizes in pixels) at (u, y)."""
    sl = c.window(u, y, 4 * max(sig_major, sig_minor) * c.px)
    du = c.u[sl] - u
    dy = c.y[sl] - y
    ca, sa = math.cos(angle), math.sin(angle)
    a = (du * ca + dy * sa) * c.h
    b = (-du * sa + dy * ca) * c.h
    img[sl] += amp * np.exp(-0.5 * ((a / sig_major) ** 2 + (b / sig_minor) ** 2))


def _segment(
    img: np.ndarray,
    c: _Grid,
    u0: float,
    y0: float,
    u1: float,
    y1: float,
    width_px: float,
    amp: float,
    taper: bool = True,
) -> None:
    """Add a thin line from (u0, y0) to (u1, y1), optionally tapering towards the end."""
    length = math.hypot(u1 - u0, y1 - y0) + 1e-9
    sl = c.window((u0 + u1) / 2, (y0 + y1) / 2, length / 2 + 3 * width_px * c.px)
    du, dy = c.u[sl] - u0, c.y[sl] - y0
    t = np.clip((du * (u1 - u0) + dy * (y1 - y0)) / length**2, 0, 1)
    d = np.hypot(du - t * (u1 - u0), dy - t * (y1 - y0)) * c.h
    w = width_px * ((1 - 0.7 * t) if taper else 1.0)
    img[sl] += amp * np.exp(-0.5 * (d / w) ** 2)


def _render_mass(img: np.ndarray, c: _Canvas, f: Finding, rng: np.random.Generator, dense: np.ndarray) -> None:
    p = f.params
    ext = f.size * (1.25 + sum(p["harm"]) + 0.15 + (max(p["spicule_len"]) if p["spicules"] else 0.0) + 0.6)
    sl = c.window(f.u, f.y, ext)
    du, dy = c.u[sl] - f.u, c.y[sl] - f.y
    d = np.hypot(du, dy)
    alpha = np.arctan2(dy, du)
    e, psi = p["ecc"], p["psi"]
    rad = 1.0 / np.sqrt(np.cos(alpha - psi) ** 2 + (np.sin(alpha - psi) / e) ** 2)
    ph = p["phase"]
    for k, hk in enumerate(p["harm"]):
        rad = rad + hk * np.cos((k + 2) * alpha + ph[k])
    if p["margin"] == "microlobulated":
        rad = rad + 0.08 * np.cos(12 * alpha + ph[4]) + 0.05 * np.cos(17 * alpha + ph[5])
    rad = rad * f.size
    body_soft = {
        "circumscribed": 0.5,
        "obscured": 0.6,
        "microlobulated": 0.5,
        "indistinct": 0.22 * f.size * c.h,
        "spiculated": 0.8,
    }[p["margin"]]
    body = _sigmoid((rad - d) * c.h / max(body_soft, 0.35))
    amp = {"high": 0.46, "equal": 0.33, "low": 0.23, "fat": 0.34}[p["density"]]
    profile = 1.0 - 0.25 * np.clip(d / (rad + 1e-6), 0, 1) ** 2
    val = amp * body * profile
    if p["density"] == "fat":  # radiolucent centre with a dense rim
        core = _sigmoid((0.6 * rad - d) * c.h / 0.6)
        val = val - 0.42 * core
    if p["spicules"]:
        for ang, ln in zip(p["spicules"], p["spicule_len"]):
            r0 = f.size * 0.8
            r1 = f.size * (1 + ln)
            _segment(
                val,
                _Sub(c, sl),
                f.u + r0 * math.cos(ang),
                f.y + r0 * math.sin(ang),
                f.u + r1 * math.cos(ang),
                f.y + r1 * math.sin(ang),
                0.7 * c.s,
                0.16,
            )
    if p["margin"] == "obscured":  # overlapping fibroglandular tissue hides part of the edge
        side = _sigmoid(((du * math.cos(ph[3]) + dy * math.sin(ph[3])) / f.size) * 3)
        val = val + 0.15 * side * _sigmoid((1.6 * f.size - d) * c.h / 2.0) * (0.6 + 0.4 * dense[sl])
    img[sl] += val


class _Sub:
    """A canvas view restricted to a window (so helpers can draw into a slice)."""

    def __init__(self, c: _Canvas, sl: tuple[slice, slice]):
        self.h, self.px, self.s = c.h, c.px, c.s
        self.u, self.y = c.u[sl], c.y[sl]
        self.w = self.u.shape[1]
        self._u0 = sl[1].start
        self._y0 = sl[0].start

    def window(self, u: float, y: float, radius: float) -> tuple[slice, slice]:
        r = radius * self.h + 2
        cu, cy = u * self.h - self._u0, y * self.h - self._y0
        hh, ww = self.u.shape
        return (
            slice(max(0, int(cy - r)), min(hh, int(cy + r) + 1)),
            slice(max(0, int(cu - r)), min(ww, int(cu + r) + 1)),
        )


def _render_calcs(img: np.ndarray, c: _Canvas, f: Finding) -> None:
    morph = f.params["morphology"]
    s = c.s
    for (u, y), j in zip(f.params["specks"], f.params["jitter"]):
        ang = j[0] * np.pi
        if morph == "punctate":
            _stamp(img, c, u, y, (0.55 + 0.2 * j[1]) * s, (0.55 + 0.2 * j[1]) * s, ang, 0.5)
        elif morph == "amorphous":
            _stamp(img, c, u, y, (0.9 + 0.4 * j[1]) * s, (0.8 + 0.3 * j[2]) * s, ang, 0.16)
        elif morph == "coarse heterogeneous":
            for k in range(3):
                du = (j[(k + 1) % 4] - 0.5) * 2.0 * c.px * s
                dv = (j[(k + 2) % 4] - 0.5) * 2.0 * c.px * s
                _stamp(img, c, u + du, y + dv, (0.7 + 0.4 * j[k]) * s, 0.6 * s, ang + k, 0.3)
        elif morph == "fine pleomorphic":
            _stamp(img, c, u, y, (0.5 + 0.6 * j[1]) * s, (0.35 + 0.2 * j[2]) * s, ang, 0.3 + 0.25 * j[3])
        elif morph == "fine linear":
            _stamp(img, c, u, y, (1.8 + 1.2 * j[1]) * s, 0.4 * s, ang, 0.45)
            if j[2] > 0.6:  # branching
                _stamp(img, c, u, y, (1.2 + 0.6 * j[3]) * s, 0.4 * s, ang + 0.7, 0.35)
        elif morph == "rim":
            rr = (1.3 + 0.6 * j[1]) * s
            sl = c.window(u, y, (rr + 3) * c.px)
            d = np.hypot(c.u[sl] - u, c.y[sl] - y) * c.h
            img[sl] += 0.42 * np.exp(-0.5 * ((d - rr) / (0.55 * s)) ** 2)
        else:  # popcorn: large lumpy coarse calcification
            for k in range(4):
                du = math.cos(ang + k * 1.6) * (1.2 + j[1]) * c.px * s
                dv = math.sin(ang + k * 1.6) * (1.2 + j[2]) * c.px * s
                _stamp(img, c, u + du, y + dv, (1.2 + 0.4 * j[3]) * s, (1.0 + 0.3 * j[k]) * s, ang + k, 0.45)


def _render_node(img: np.ndarray, c: _Canvas, f: Finding) -> None:
    sl = c.window(f.u, f.y, f.size * 1.6)
    du, dy = c.u[sl] - f.u, c.y[sl] - f.y
    ca, sa = math.cos(f.params["psi"]), math.sin(f.params["psi"])
    a = (du * ca + dy * sa) / f.size
    b = (-du * sa + dy * ca) / (0.6 * f.size)
    body = _sigmoid((1 - np.hypot(a, b)) * f.size * c.h / 0.6)
    hu, hy = math.cos(f.params["hilum"]), math.sin(f.params["hilum"])
    hil = _sigmoid((0.45 - np.hypot(a - 0.8 * hu, b - 0.8 * hy)) * f.size * c.h / 0.6)
    img[sl] += 0.28 * body - 0.22 * body * hil


def render(scene: Scene, height: int) -> np.ndarray:
    """Paint a scene as a uint8 (height, width) image."""
    if height < 32:
        raise ValueError(f"phantom height must be at least 32 pixels, got {height}")
    rng = np.random.default_rng([scene.render_seed, height])
    c = _Canvas(height)
    br = scene.breast
    r = _breast_radius(c, br)
    inside = _sigmoid((1 - r) * br.a * c.h / 0.7)  # soft outline
    falloff = np.sqrt(np.clip((1 - r) / 0.18, 0, 1))  # compressed thickness thins towards the skin

    # fibroglandular tissue: fractal noise biased to the retroareolar region, thresholded at the density fraction
    field = _fbm(rng, c.h, c.w, (3, 6, 12, 24), 0.55)
    nu, ny = br.nipple()
    bias = -1.6 * ((c.u / br.a - 0.45) ** 2) * 3 - 1.2 * ((c.y - ny) / br.b) ** 2 - 2.0 * np.clip(r - 0.8, 0, None) * 5
    field = field + bias
    frac = {"A": 0.06, "B": 0.22, "C": 0.48, "D": 0.75}[scene.density]
    inner = r < 0.97
    thr = np.quantile(field[inner], 1 - frac) if inner.any() else 0.0
    dense = _sigmoid((field - thr) / 0.18)
    fine = _fbm(rng, c.h, c.w, (24, 48), 0.7)
    tissue = 0.2 + 0.1 * falloff + dense * (0.26 + 0.05 * fine) * falloff
    # trabecular texture in the fat
    tissue += 0.025 * fine * (1 - dense) * falloff

    # pectoral muscle
    if br.pect_w > 0:
        edge = br.pect_w * (1 - c.y / br.pect_h) - c.u
        pect = _sigmoid(edge * c.h / 0.8) * (c.y < br.pect_h)
        tissue = tissue * (1 - pect) + pect * (0.58 + 0.06 * fine + 0.05 * (1 - c.y))
    img = tissue * inside

    # skin line (thicker when skin thickening is planted)
    band = np.clip(br.skin / br.a, 0.006, None)
    skin = np.exp(-0.5 * ((r - (1 - band / 2)) / (band / 2 + 0.003)) ** 2)
    img = img + (0.22 if br.skin > 0.01 else 0.12) * skin * (r < 1.02)

    # nipple in profile: a nub at the anterior end of the outline
    if scene.attributes["nipple_in_profile"]:
        dn = np.hypot(c.u - nu - NIPPLE_OFFSET * math.cos(br.tilt), c.y - ny - NIPPLE_OFFSET * math.sin(br.tilt))
        img = np.maximum(img, NIPPLE_GREY * _sigmoid((NIPPLE_RADIUS - dn) * c.h / 0.6))

    for f in scene.findings:
        if f.kind == "implant":
            du = (c.u - 0.0) / f.params["ru"]
            dy = (c.y - f.y) / f.params["ry"]
            imp = _sigmoid((1 - np.hypot(du, dy)) * f.params["ru"] * c.h / 0.8) * inside
            img = img * (1 - imp) + imp * (0.88 + 0.02 * fine)
        elif f.kind == "mass":
            _render_mass(img, c, f, rng, dense)
        elif f.kind == "calcification":
            _render_calcs(img, c, f)
        elif f.kind == "distortion":
            for ang, ln in zip(f.params["angles"], f.params["lengths"]):
                _segment(
                    img,
                    c,
                    f.u,
                    f.y,
                    f.u + f.size * ln * math.cos(ang),
                    f.y + f.size * ln * math.sin(ang),
                    0.6 * c.s,
                    0.14,
                )
            _stamp(img, c, f.u, f.y, 2.0 * c.s, 2.0 * c.s, 0.0, 0.06)
        elif f.kind == "asymmetry":
            sl = c.window(f.u, f.y, 2 * f.size)
            d2 = ((c.u[sl] - f.u) ** 2 + (c.y[sl] - f.y) ** 2) / f.size**2
            img[sl] += ASYMMETRY_GREY * np.exp(-0.5 * d2**1.5) * (0.75 + 0.25 * np.tanh(field[sl] - thr + 1))
        elif f.kind == "lymph_node":
            _render_node(img, c, f)
        elif f.kind == "skin_marker":
            dm = np.hypot(c.u - f.u, c.y - f.y)
            img = np.maximum(img, 0.98 * _sigmoid((f.size - dm) * c.h / 0.5))

    img = img + rng.normal(0, 0.012, img.shape).astype(np.float32) * (0.3 + inside)
    img = np.clip(img, 0, 1)
    if scene.laterality == "R":
        img = img[:, ::-1]
    return np.ascontiguousarray((img * 255 + 0.5).astype(np.uint8))


def make_phantom(seed: int, index: int, height: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Image and ground-truth attributes of phantom `index` of stream `seed`."""
    scene = sample_scene(seed, index)
    return render(scene, height), scene_attributes(scene, height)


def scene_dict(scene: Scene) -> dict[str, Any]:
    """A JSON-able view of a scene (debugging, contact sheets)."""
    return asdict(scene)
