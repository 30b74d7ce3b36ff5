"""Synthetic radiology reports written from a phantom's ground truth.

Why: the demo dissector is trained contrastively on image-report pairs, as
Mammo-CLIP was.  Mammo-CLIP synthesised reports for VinDr images from their
labels with templates; we do the same from the phantom's attributes.  Reports
are lower-case and have no periods (Mammo-CLIP's "wo_period" text,
docs/METHOD.md §7.3); sentences appear in random order with varied wording, and negatives ("no
mass") are sometimes stated, so the zero-shot prompt pairs of Mammo-CLIP mean
something to the model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_DENSITY = {
    "A": [
        "the breast is almost entirely fatty",
        "almost entirely fatty breast tissue density a",
        "density a almost entirely fatty",
    ],
    "B": [
        "there are scattered fibroglandular densities",
        "scattered areas of fibroglandular density density b",
        "density b scattered fibroglandular densities",
    ],
    "C": [
        "the breast is heterogeneously dense which may obscure small masses",
        "heterogeneously dense breast tissue density c",
        "density c heterogeneously dense",
    ],
    "D": [
        "the breast is extremely dense which lowers the sensitivity of mammography",
        "extremely dense breast tissue density d",
        "density d extremely dense",
    ],
}
_VIEW = {"CC": ["craniocaudal view", "cc view"], "MLO": ["mediolateral oblique view", "mlo view"]}
_SIDE = {"L": "left", "R": "right"}
_MASS_DENSITY = {"high": "high density", "equal": "equal density", "low": "low density", "fat": "fat-containing"}


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def report_sentences(attrs: dict[str, Any], rng: np.random.Generator) -> list[str]:
    """One sentence per fact; wording drawn from `rng`.

    The helpers draw from `rng` in a fixed order (view, density, mass,
    calcification, other findings, image facts, BI-RADS): reordering them
    would reword every report and so retrain the demo dissector.
    """
    side = _SIDE[attrs["laterality"]]
    loc = attrs.get("locations", {})
    view = _VIEW[attrs["view"]]
    s: list[str] = [
        _pick(rng, [f"{side} breast {v}" for v in view] + [f"{view[0]} of the {side} breast"]),
        _pick(rng, _DENSITY[attrs["density"]]),
    ]
    s += _mass_sentences(attrs, loc, side, rng)
    s += _calcification_sentences(attrs, loc, side, rng)
    s += _other_finding_sentences(attrs, side, rng)
    s += _image_sentences(attrs, rng)
    s.append(f"bi-rads {attrs['birads']}" if rng.random() < 0.5 else f"birads category {attrs['birads']}")
    return s


def _mass_sentences(attrs: dict[str, Any], loc: dict[str, str], side: str, rng: np.random.Generator) -> list[str]:
    """The mass (location, shape/margin/density) or, sometimes, its stated absence."""
    if not attrs["mass"]:
        return [_pick(rng, ["no mass", "no mass is seen", "no suspicious mass"])] if rng.random() < 0.4 else []
    s: list[str] = []
    if "mass" in loc and rng.random() < 0.6:
        s.append(f"mass located in the {loc['mass']} {side} breast")
    shape, margin = attrs["mass_shape"], attrs["mass_margin"]
    md = _MASS_DENSITY[attrs["mass_density"]]
    s.append(
        _pick(
            rng,
            [
                f"{shape} mass with {margin} margin",
                f"there is an {shape} {md} mass with {margin} margins".replace(" an r", " a r"),
                f"{md} {shape} mass {margin} margin",
            ],
        )
    )
    if rng.random() < 0.5:
        s.append(f"{md} mass" if attrs["mass_density"] != "fat" else "fat-containing mass")
    return s


def _calcification_sentences(
    attrs: dict[str, Any], loc: dict[str, str], side: str, rng: np.random.Generator
) -> list[str]:
    """Calcifications (location, morphology, distribution, benign or suspicious) or, sometimes, their absence."""
    morph, dist = attrs.get("calc_morphology"), attrs.get("calc_distribution")
    if not morph:
        none = ["no suspicious calcification", "no calcifications", "no suspicious microcalcifications"]
        return [_pick(rng, none)] if rng.random() < 0.4 else []
    s: list[str] = []
    if "calcification" in loc and rng.random() < 0.5:
        s.append(f"calcifications located in the {loc['calcification']} {side} breast")
    kind = "suspicious calcification" if attrs["calcification"] else "benign calcification"
    s.append(
        _pick(
            rng,
            [
                f"{morph} calcifications in a {dist} distribution",
                f"{dist} {morph} calcifications",
                f"{kind} {morph} calcifications with {dist} distribution",
            ],
        )
    )
    if rng.random() < 0.5:
        s.append(kind)
    return s


def _other_finding_sentences(attrs: dict[str, Any], side: str, rng: np.random.Generator) -> list[str]:
    """Distortion, asymmetry, lymph nodes, skin thickening, implant and skin marker: named only when present."""
    s: list[str] = []
    if attrs["architectural_distortion"]:
        distortion = [
            "architectural distortion",
            f"architectural distortion in the {side} breast",
            "there is architectural distortion without a central mass",
        ]
        s.append(_pick(rng, distortion))
    if attrs["asymmetry"] == "focal":
        s.append(_pick(rng, ["focal asymmetry", f"focal asymmetry in the {side} breast", "a focal asymmetry is seen"]))
    elif attrs["asymmetry"] == "global":
        s.append(_pick(rng, ["global asymmetry", "asymmetry of a large portion of the breast", "asymmetry"]))
    if attrs["lymph_node"] == "intramammary":
        s.append(_pick(rng, ["intramammary lymph node", "benign appearing intramammary lymph node with fatty hilum"]))
    elif attrs["lymph_node"] == "axillary":
        s.append(_pick(rng, ["axillary lymph node", f"{side} axillary lymph node seen over the pectoral muscle"]))
    if attrs["skin_thickening"]:
        thickening = ["skin thickening", f"diffuse skin thickening of the {side} breast", "the skin is thickened"]
        s.append(_pick(rng, thickening))
    if attrs["implant"]:
        s.append(_pick(rng, ["breast implant", "breast implant in place", "implant seen behind the breast tissue"]))
    if attrs["skin_marker"]:
        s.append(_pick(rng, ["skin marker", "a skin marker is placed on the breast", "radiopaque skin marker"]))
    return s


def _image_sentences(attrs: dict[str, Any], rng: np.random.Generator) -> list[str]:
    """Image-quality facts and the no-finding statement, each stated only some of the time."""
    s: list[str] = []
    if attrs["pectoral_muscle"] and rng.random() < 0.5:
        s.append(_pick(rng, ["pectoral muscle is visible", "pectoral muscle included"]))
    if attrs["nipple_in_profile"]:
        if rng.random() < 0.5:
            s.append("nipple in profile")
    elif rng.random() < 0.7:
        s.append(_pick(rng, ["nipple not in profile", "the nipple is not in profile"]))
    if attrs["findings"] == ["No Finding"] and rng.random() < 0.6:
        s.append(_pick(rng, ["no significant finding", "no suspicious findings", "normal mammogram"]))
    return s


def report_parts(attrs: dict[str, Any], seed: int = 0, variant: int = 0, max_sentences: int | None = None) -> list[str]:
    """The sentences of a report, in report order (the demo dissector embeds them one by one).

    `variant` draws another wording of the same facts; `max_sentences` keeps a
    random subset (partial captions teach the model that a short phrase such as
    "spiculated margin" names a part of the image).
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(attrs.get("phantom_index", 0)), int(variant), 7])
    sents = report_sentences(attrs, rng)
    order = rng.permutation(len(sents))
    sents = [sents[i] for i in order]
    if max_sentences is not None and len(sents) > max_sentences:
        sents = sents[:max_sentences]
    return [t.lower().replace(".", "") for t in sents]


def make_report(attrs: dict[str, Any], seed: int = 0, variant: int = 0, max_sentences: int | None = None) -> str:
    """A lower-case report without periods (Mammo-CLIP's synthetic-report style)."""
    return " ".join(report_parts(attrs, seed, variant, max_sentences))
