"""Layering: the language never imports the engine; the plan is the executor's only input.

Why it matters: `dissect-study check` must stay fast and usable without torch
(and a study's vocabulary must not depend on engine code being importable), and a
run must be reproducible from its plan alone (`--dry-run` prints what will run).
"""

from __future__ import annotations

import ast as pyast
import inspect
import json
import subprocess
import sys
from pathlib import Path

from helpers.paths import REPO as REPO_DIR

from dissect_study.dsl import check_text
from dissect_study.engine.plan.steps import DeclStep, Plan, build_plan
from dissect_study.engine.run import Executor

ROOT = REPO_DIR

PROBE = """
import json, sys
from pathlib import Path
from dissect_study.dsl import check_text
import dissect_study.dsl.checker
text = Path(sys.argv[1]).read_text()
checked, diags = check_text(text, sys.argv[1], env={})
loaded = sorted(m for m in sys.modules if m.startswith("dissect_study.engine") or m.split(".")[0] in
                ("torch", "numba", "numpy", "pandas", "transformers", "timm"))
print(json.dumps({"ok": checked is not None, "loaded": loaded}))
"""


def test_checking_a_study_imports_no_engine_torch_or_numba():
    """A fresh interpreter: import the checker and check the demo study, then look at sys.modules."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(ROOT / "studies" / "demo.study")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"], "studies/demo.study should check cleanly"
    assert result["loaded"] == []


def _imports(path: Path) -> set[str]:
    tree = pyast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in pyast.walk(tree):  # also imports inside functions: lazy imports count
        if isinstance(node, pyast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, pyast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_dsl_module_imports_the_engine_even_lazily():
    dsl_files = sorted((ROOT / "dsl").glob("*.py"))
    assert dsl_files
    offenders = {f.name: sorted(m for m in _imports(f) if m.startswith("dissect_study.engine")) for f in dsl_files}
    assert {k: v for k, v in offenders.items() if v} == {}
    # the shared pieces both sides use import neither side's heavy modules
    for shared in ("errors.py", "plugins.py"):
        assert not [m for m in _imports(ROOT / shared) if m.startswith(("dissect_study.", "torch", "numpy"))]


STUDY = """
study "layering"
let n = 12
concepts c = shipped("mammo_v1")
probe ph = phantom(n=n, seed=1, height=64)
probe mix = union(ph) sample 6 seed 2
dissector d = demo()
target G = demo("G")
target M = image_tower(d)
layer deep = blocks.3-4
threshold mean_all
dissect G, M at layers early, deep by d on mix with concepts c
compare G vs M at layer deep
report "out/x" as html
"""


def test_the_plan_carries_everything_the_executor_reads():
    checked, diags = check_text(STUDY, "/tmp/layering.study", env={})
    assert checked is not None, [d.message for d in diags]
    plan = build_plan(checked)
    # what the executor used to read from the study object is in the plan
    assert plan.study_text == STUDY and plan.title == "layering"
    assert plan.tau_statistic == "mean_all"
    assert set(plan.layer_aliases) == {"deep"}
    # typed steps: the union's member is built first, the sample clause travels with its probe
    assert [s.name for s in plan.probes] == ["ph", "mix"] and all(isinstance(s, DeclStep) for s in plan.probes)
    assert plan.probes[0].params == {"n": 12, "seed": 1, "height": 64}
    assert plan.probes[1].sample is not None and plan.probes[1].sample.n == 6
    assert [s.name for s in plan.dissectors] == ["d"]  # needed by image_tower(d) and the dissections
    assert [(x.target, x.probe) for x in plan.dissections] == [("G", "mix"), ("M", "mix")]
    assert plan.image_passes == [("d", "mix")] and plan.text_passes == [("d", "c")]
    assert [a.kind for a in plan.analyses] == ["compare"] and [r.formats for r in plan.reports] == [("html",)]
    # study aliases are inlined by the checker; builtin ones stay symbolic until the model is built
    assert "target pass : G on mix, layers early, blocks.3-4" in plan.describe()


def test_executor_takes_the_plan_and_options_only():
    params = list(inspect.signature(Executor.__init__).parameters)
    assert params == ["self", "plan", "options"]
    assert inspect.signature(Executor.__init__).parameters["plan"].annotation in (Plan, "Plan")
    source = inspect.getsource(Executor)
    assert "self.study" not in source
