"""ImageNet-style class folders (`<root>/<class>/<image>`), e.g. ImageNette/ImageWoof.

The out-of-domain probes of the paper's Appendix C/D.  Classes are the
sub-folders in sorted order (as torchvision's ImageFolder numbers them);
images within a class are taken in sorted relative-path order and, with
`per_class=N`, the first N are kept -- deterministic, so two studies naming the
same folder get the same probe (use a `sample` clause for a seeded draw).
"""

from __future__ import annotations

from typing import Any

from dissect_study.engine.probes import ProbeError
from dissect_study.engine.probes.base import ProbeItem
from dissect_study.engine.probes.folder import FileProbe, iter_image_files, user_path
from dissect_study.engine.registry import PROBES


@PROBES.register("imagenet")
def build_imagenet(name: str, params: dict[str, Any], ctx: Any) -> FileProbe:
    """`imagenet(path, per_class=none)`: attributes `label` (class folder name) and `class_index`."""
    root = user_path(params.get("path"), ctx, f"probe {name}: path", kind="dir")
    per_class = params.get("per_class")
    if per_class is not None and int(per_class) < 1:
        raise ProbeError(f"probe {name}: per_class={per_class} must be at least 1.")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ProbeError(f"probe {name}: {root} has no class sub-folders; expected <root>/<class>/<image files>.")
    items: list[ProbeItem] = []
    counts: dict[str, int] = {}
    for idx, cdir in enumerate(classes):
        files = iter_image_files(cdir, recursive=True, log=getattr(ctx, "log", None))
        if per_class is not None:
            files = files[: int(per_class)]
        counts[cdir.name] = len(files)
        for f in files:
            items.append(ProbeItem(f.relative_to(root).as_posix(), str(f), {"label": cdir.name, "class_index": idx}))
    if not items:
        raise ProbeError(f"probe {name}: the class folders under {root} hold no image files.")
    empty = [c for c, n in counts.items() if n == 0]
    if empty and getattr(ctx, "log", None):
        ctx.warning(f"probe {name}: {len(empty)} class folder(s) without images: {', '.join(empty[:5])}")
    info = {
        "kind": "imagenet",
        "root": str(root),
        "per_class": per_class,
        "n_classes": len(classes),
        "images_per_class": counts,
    }
    return FileProbe(name, items, info)
