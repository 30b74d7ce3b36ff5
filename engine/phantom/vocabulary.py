"""The phantom's ground truth, named in the words of the concept set.

Every attribute value the generator can plant is mapped to the concept phrases
that name it.  The calibration bench uses this map to decide whether a neuron's
label is *right*: a neuron selective for spiculated masses is correctly labelled
"spiculated margin", wrongly labelled "punctate calcifications".  The phrases
are copied verbatim into the shipped concept set (`concept_sets/mammo_v1.csv`),
so a label can only ever be a hit if the dissector can find it there.

The attribute keys follow the probe vocabulary shared with the VinDr probes
(`view`, `laterality`, `density`, `mass`, `calcification`, ...) plus the
phantom's detail keys (`mass_shape`, `calc_morphology`, ...).
"""

from __future__ import annotations

from typing import Any

MASS_SHAPES = ("oval", "round", "irregular")
MASS_MARGINS = ("circumscribed", "obscured", "microlobulated", "indistinct", "spiculated")
MASS_DENSITIES = ("high", "equal", "low", "fat")
CALC_MORPHOLOGIES = (
    "punctate",
    "amorphous",
    "coarse heterogeneous",
    "fine pleomorphic",
    "fine linear",
    "rim",
    "popcorn",
)
#: BI-RADS: suspicious morphologies; the others are typically benign
SUSPICIOUS_CALCS = ("amorphous", "coarse heterogeneous", "fine pleomorphic", "fine linear")
BENIGN_CALCS = ("punctate", "rim", "popcorn")
CALC_DISTRIBUTIONS = ("diffuse", "regional", "grouped", "linear", "segmental")
DENSITIES = ("A", "B", "C", "D")
ASYMMETRIES = ("focal", "global")
LYMPH_NODES = ("intramammary", "axillary")

_DENSITY_WORDS = {
    "A": "almost entirely fatty",
    "B": "scattered fibroglandular densities",
    "C": "heterogeneously dense",
    "D": "extremely dense",
}

GROUND_TRUTH_CONCEPTS: dict[tuple[str, Any], tuple[str, ...]] = {
    **{("mass_shape", s): (f"{s} mass",) for s in MASS_SHAPES},
    **{("mass_margin", m): (f"{m} margin",) for m in MASS_MARGINS},
    ("mass_density", "high"): ("high density mass",),
    ("mass_density", "equal"): ("equal density mass",),
    ("mass_density", "low"): ("low density mass",),
    ("mass_density", "fat"): ("fat-containing mass",),
    **{("calc_morphology", m): (f"{m} calcifications",) for m in CALC_MORPHOLOGIES},
    **{("calc_distribution", d): (f"{d} calcifications",) for d in CALC_DISTRIBUTIONS},
    ("architectural_distortion", True): ("architectural distortion",),
    ("asymmetry", "focal"): ("focal asymmetry", "asymmetry"),
    ("asymmetry", "global"): ("global asymmetry", "asymmetry"),
    ("lymph_node", "intramammary"): ("intramammary lymph node",),
    ("lymph_node", "axillary"): ("axillary lymph node",),
    ("skin_thickening", True): ("skin thickening",),
    ("implant", True): ("breast implant",),
    ("skin_marker", True): ("skin marker",),
    **{("density", d): (_DENSITY_WORDS[d], f"density {d}") for d in DENSITIES},
    ("pectoral_muscle", True): ("pectoral muscle",),
    ("nipple_in_profile", True): ("nipple",),
    ("mass", True): ("mass",),
    ("calcification", True): ("suspicious calcifications", "calcification"),
    ("benign_calcification", True): ("benign calcifications", "calcification"),
    ("view", "CC"): ("craniocaudal view",),
    ("view", "MLO"): ("mediolateral oblique view",),
    ("laterality", "L"): ("left breast",),
    ("laterality", "R"): ("right breast",),
}

#: every phrase above, once, in a stable order (the concept set must contain them all)
ALL_PHRASES: tuple[str, ...] = tuple(dict.fromkeys(p for ps in GROUND_TRUTH_CONCEPTS.values() for p in ps))


def attribute_matches(attributes: dict[str, Any], attribute: str, value: Any) -> bool:
    """Whether an image's attributes carry `attribute == value` (booleans: truthy)."""
    got = attributes.get(attribute)
    if value is True:
        return bool(got)
    return got == value


def true_concepts(attributes: dict[str, Any]) -> set[str]:
    """Every concept phrase that truthfully describes one phantom image."""
    out: set[str] = set()
    for (attr, value), phrases in GROUND_TRUTH_CONCEPTS.items():
        if attribute_matches(attributes, attr, value):
            out.update(phrases)
    return out


# --------------------------------------------------------------------------- demo dissector training text
#: other wordings of an attribute value that the demo dissector is taught alongside its
#: ground-truth phrases: Mammo-CLIP's zero-shot prompts' words for it.  A concept-set phrase
#: listed here competes with the ground-truth phrase for the label, so only prompts are
#: listed (not, say, "mlo view", which would then tie with "mediolateral oblique view")
SYNONYMS: dict[tuple[str, Any], tuple[str, ...]] = {
    ("density", "A"): ("fatty", "the breast is almost entirely fatty"),
    ("density", "B"): ("scattered areas of fibroglandular density", "scattered fibroglandular density"),
    ("density", "C"): ("heterogeneously dense breast",),
    ("density", "D"): ("extremely dense breast",),
    ("calcification", True): ("suspicious calcification",),
    ("benign_calcification", True): ("benign calcification",),
}

#: stated absences ("no mass"): true for an image exactly when the attribute is absent
NEGATIONS: dict[str, tuple[str, ...]] = {
    "mass": ("no mass",),
    "calcification": ("no suspicious calcification", "no suspicious calcifications"),
    "architectural_distortion": ("no architectural distortion",),
    "implant": ("no breast implant",),
    "skin_thickening": ("no skin thickening",),
    "skin_marker": ("no skin marker",),
    "asymmetry": ("no asymmetry",),
    "lymph_node": ("no lymph node",),
    "calc_morphology": ("no calcifications",),
    "pectoral_muscle": ("no pectoral muscle",),
    "nipple_in_profile": ("nipple not in profile",),
}
#: concept-set phrases the phantom's reports use for facts outside the ground-truth map: taught
#: true where they apply.  Left out, the phrase loss would call them false for every phantom
#: while the CLIP loss pairs them with the images they describe, teaching the dissector both ways.
REPORT_FACTS: dict[tuple[str, Any], tuple[str, ...]] = {("birads", n): (f"BI-RADS {n}",) for n in range(7)}
#: stated normality: true of a phantom with no finding
NORMAL_PHRASES: tuple[str, ...] = ("no suspicious findings", "normal mammogram")

#: detail attributes whose absence is their parent finding's absence
_PARENT = {
    "mass_shape": "mass",
    "mass_margin": "mass",
    "mass_density": "mass",
    "calc_distribution": "calc_morphology",
    "benign_calcification": "calc_morphology",
}


def phrase_truth(attributes: dict[str, Any]) -> set[str]:
    """Every phrase (ground truth, synonym or stated absence) that describes one phantom truly."""
    out = true_concepts(attributes)
    for (attr, value), phrases in [*SYNONYMS.items(), *REPORT_FACTS.items()]:
        if attribute_matches(attributes, attr, value):
            out.update(phrases)
    for attr, phrases in NEGATIONS.items():
        if not attributes.get(attr):
            out.update(phrases)
    if attributes.get("findings") == ["No Finding"]:
        out.update(NORMAL_PHRASES)
    return out


#: every phrase the demo dissector is taught to tie to the phantom's attributes
TAUGHT_PHRASES: tuple[str, ...] = tuple(
    dict.fromkeys(
        list(ALL_PHRASES)
        + [p for ps in SYNONYMS.values() for p in ps]
        + [p for ps in NEGATIONS.values() for p in ps]
        + [p for ps in REPORT_FACTS.values() for p in ps]
        + list(NORMAL_PHRASES)
    )
)


def zero_shot_groups() -> dict[str, list[tuple[Any, str]]]:
    """Per attribute, its (value, prompt) pairs for a Mammo-CLIP-style zero-shot check.

    A softmax over a group's prompts scores each value; `None` is the stated-absence
    prompt of an attribute that a phantom may lack ("no mass").  Binary attributes
    have one value, True.
    """
    groups: dict[str, list[tuple[Any, str]]] = {}
    for (attr, value), phrases in GROUND_TRUTH_CONCEPTS.items():
        members = groups.setdefault(attr, [])
        if all(v != value for v, _ in members):
            members.append((value, phrases[0]))
    for attr, members in groups.items():
        parent = _PARENT.get(attr, attr)
        if parent in NEGATIONS:
            members.append((None, NEGATIONS[parent][0]))
    return groups
