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
    """One sentence per fact; wording drawn from `rng`."""
    side = _SIDE[attrs["laterality"]]
    loc = attrs.get("locations", {})
    s: list[str] = [
        _pick(
            rng,
            [f"{side} breast {v}" for v in _VIEW[attrs["view"]]] + [f"{_VIEW[attrs['view']][0]} of the {side} breast"],
        ),
        _pick(rng, _DENSITY[attrs["density"]]),
    ]
    if attrs["mass"]:
        where = ""
        if "mass" in loc and rng.random() < 0.6:
            s.append(f"mass located in the {loc['mass']} {side} breast")
        md = _MASS_DENSITY[attrs["mass_density"]]
        s.append(
            _pick(
                rng,
                [
                    f"{attrs['mass_shape']} mass with {attrs['mass_margin']} margin{where}",
                    f"there is an {attrs['mass_shape']} {md} mass with {attrs['mass_margin']} margins{where}".replace(
                        " an r", " a r"
                    ),
                    f"{md} {attrs['mass_shape']} mass {attrs['mass_margin']} margin{where}",
                ],
            )
        )
        if rng.random() < 0.5:
            s.append(f"{md} mass" if attrs["mass_density"] != "fat" else "fat-containing mass")
    elif rng.random() < 0.4:
        s.append(_pick(rng, ["no mass", "no mass is seen", "no suspicious mass"]))
    morph, dist = attrs.get("calc_morphology"), attrs.get("calc_distribution")
    if morph:
        where = ""
        if "calcification" in loc and rng.random() < 0.5:
            s.append(f"calcifications located in the {loc['calcification']} {side} breast")
        kind = "suspicious calcification" if attrs["calcification"] else "benign calcification"
        s.append(
            _pick(
                rng,
                [
                    f"{morph} calcifications in a {dist} distribution{where}",
                    f"{dist} {morph} calcifications{where}",
                    f"{kind} {morph} calcifications with {dist} distribution",
                ],
            )
        )
        if rng.random() < 0.5:
            s.append(kind)
    elif rng.random() < 0.4:
        s.append(_pick(rng, ["no suspicious calcification", "no calcifications", "no suspicious microcalcifications"]))
    if attrs["architectural_distortion"]:
        s.append(
            _pick(
                rng,
                [
                    "architectural distortion",
                    f"architectural distortion in the {side} breast",
                    "there is architectural distortion without a central mass",
                ],
            )
        )
    if attrs["asymmetry"] == "focal":
        s.append(_pick(rng, ["focal asymmetry", f"focal asymmetry in the {side} breast", "a focal asymmetry is seen"]))
    elif attrs["asymmetry"] == "global":
        s.append(_pick(rng, ["global asymmetry", "asymmetry of a large portion of the breast", "asymmetry"]))
    if attrs["lymph_node"] == "intramammary":
        s.append(_pick(rng, ["intramammary lymph node", "benign appearing intramammary lymph node with fatty hilum"]))
    elif attrs["lymph_node"] == "axillary":
        s.append(_pick(rng, ["axillary lymph node", f"{side} axillary lymph node seen over the pectoral muscle"]))
    if attrs["skin_thickening"]:
        s.append(
            _pick(rng, ["skin thickening", f"diffuse skin thickening of the {side} breast", "the skin is thickened"])
        )
    if attrs["implant"]:
        s.append(_pick(rng, ["breast implant", "breast implant in place", "implant seen behind the breast tissue"]))
    if attrs["skin_marker"]:
        s.append(_pick(rng, ["skin marker", "a skin marker is placed on the breast", "radiopaque skin marker"]))
    if attrs["pectoral_muscle"] and rng.random() < 0.5:
        s.append(_pick(rng, ["pectoral muscle is visible", "pectoral muscle included"]))
    if attrs["nipple_in_profile"] and rng.random() < 0.3:
        s.append("nipple in profile")
    if attrs["findings"] == ["No Finding"] and rng.random() < 0.6:
        s.append(_pick(rng, ["no significant finding", "no suspicious findings", "normal mammogram"]))
    s.append(f"bi-rads {attrs['birads']}" if rng.random() < 0.5 else f"birads category {attrs['birads']}")
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
