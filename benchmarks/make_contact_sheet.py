"""Render docs/phantom_contact_sheet.png: a grid of synthetic phantoms with their labels.

Run: .venv/bin/python benchmarks/make_contact_sheet.py [--out docs/phantom_contact_sheet.png]
The sheet says plainly that the images are synthetic (procedural phantoms, not patients).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from dissect_study.engine.phantom.generator import make_phantom

#: phantoms chosen to show the vocabulary: (predicate on attributes, caption)
WANTED = [
    (lambda a: a["findings"] == ["No Finding"] and a["density"] == "A", "normal, density A"),
    (lambda a: a["findings"] == ["No Finding"] and a["density"] == "D", "normal, density D"),
    (lambda a: a["mass_margin"] == "spiculated", "spiculated mass"),
    (lambda a: a["mass_margin"] == "circumscribed" and a["mass_shape"] == "oval", "oval circumscribed mass"),
    (lambda a: a["mass_density"] == "fat", "fat-containing mass"),
    (
        lambda a: a["calc_morphology"] == "fine linear" and a["calc_distribution"] in ("linear", "segmental"),
        "fine linear calcs",
    ),
    (
        lambda a: a["calc_morphology"] == "fine pleomorphic" and a["calc_distribution"] == "grouped",
        "grouped pleomorphic calcs",
    ),
    (lambda a: a["calc_morphology"] == "popcorn", "popcorn calcs"),
    (lambda a: a["calc_morphology"] == "rim", "rim calcs"),
    (lambda a: a["architectural_distortion"] and not a["mass"], "architectural distortion"),
    (lambda a: a["asymmetry"] == "focal", "focal asymmetry"),
    (lambda a: a["lymph_node"] == "axillary", "axillary lymph node"),
    (lambda a: a["implant"], "breast implant"),
    (lambda a: a["skin_thickening"], "skin thickening"),
    (lambda a: a["skin_marker"], "skin marker"),
    (lambda a: a["view"] == "MLO" and a["density"] == "C" and a["findings"] == ["No Finding"], "MLO, density C"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "phantom_contact_sheet.png"))
    ap.add_argument("--height", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tiles = []
    used: set[int] = set()
    for pred, caption in WANTED:
        for i in range(5000):
            if i in used:
                continue
            from dissect_study.engine.phantom.generator import sample_scene

            a = sample_scene(args.seed, i).attributes
            if pred(a):
                img, attrs = make_phantom(args.seed, i, args.height)
                used.add(i)
                tiles.append((img, f"{caption} ({attrs['view']} {attrs['laterality']})"))
                break
    h, w = tiles[0][0].shape
    cols, cap = 8, 16
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("L", (cols * w, rows * (h + cap) + 22), 255)
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), "SYNTHETIC procedural mammogram phantoms (dissect-study demo) -- not patient images", fill=0)
    for k, (img, caption) in enumerate(tiles):
        r, c = divmod(k, cols)
        x, y = c * w, 22 + r * (h + cap)
        sheet.paste(Image.fromarray(img), (x, y))
        draw.text((x + 2, y + h + 2), caption[:34], fill=0)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({len(tiles)} phantoms, {sheet.size[0]}x{sheet.size[1]})")


if __name__ == "__main__":
    main()
