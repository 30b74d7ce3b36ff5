"""One forward pass per distinct network: M = image_tower(mammo) shares the dissector's pass.

A real-format Mammo-CLIP `.tar` (tiny EfficientNet, written the way the original
trainer saves) is dissected through its own image tower.  Every image that goes
through the EfficientNet is counted: with the shared pass the probe goes through
it once, and the scores equal those of a run that embeds the probe separately.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import torch
from helpers.checkpoints import write_tiny_real_clip
from helpers.models import make_text_folder, tiny_bert_config, tiny_clip_state_dict

from dissect_study.dsl import check_file
from dissect_study.engine.models.efficientnet import CONFIGS, EfficientNet
from dissect_study.engine.models.mammo_clip import MammoClipModel, new_bert
from dissect_study.engine.passes import execute as passes_stage
from dissect_study.engine.plan.steps import build_plan
from dissect_study.engine.run import RunOptions, run_study

N_IMAGES = 4

STUDY = """study "shared pass"
concepts c = shipped("mammo_v1")
probe p = phantom(n={n}, seed=3, height=64)
dissector mammo = mammo_clip(checkpoint="{ckpt}", text="{text}")
target M = image_tower(mammo)
dissect M at layers early, last by mammo on p with concepts c using soft_wpmi(top_k=3)
"""


@pytest.fixture(scope="module")
def study_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shared")
    model = MammoClipModel(CONFIGS["tiny"], new_bert(tiny_bert_config()), proj_dim=8)
    model.load_state_dict(tiny_clip_state_dict(seed=4))
    ckpt = write_tiny_real_clip(root / "b5-model-best-epoch-7.tar", model)
    text = make_text_folder(root / "bert")
    path = root / "s.study"
    path.write_text(STUDY.format(n=N_IMAGES, ckpt=ckpt, text=text), encoding="utf-8")
    return path


@pytest.fixture
def images_through_effnet(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes of every EfficientNet forward call (target passes and dissector passes alike)."""
    seen: list[int] = []
    forward = EfficientNet.forward

    def counting(self, x, *args, **kwargs):
        seen.append(int(x.shape[0]))
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(EfficientNet, "forward", counting)
    return seen


def _run(study_file: Path, tmp: Path) -> tuple[str, Path]:
    study, diags = check_file(str(study_file))
    assert study is not None, diags
    db = tmp / "r.duckdb"
    res = run_study(study, RunOptions(db=db, cache_dir=tmp / "cache", quiet=True, reports=False))
    return res.run_id, db


def _scores(db: Path) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT layer, unit, concept_id, score FROM similarities ORDER BY ALL").fetchall()


def test_one_effnet_pass_serves_m_and_the_dissector_with_the_same_scores(
    study_file, images_through_effnet, tmp_path, monkeypatch
):
    _run(study_file, tmp_path / "shared")
    assert sum(images_through_effnet) == N_IMAGES
    shared = _scores(tmp_path / "shared" / "r.duckdb")

    images_through_effnet.clear()
    monkeypatch.setattr(passes_stage, "shared_passes", lambda ex: {})
    _run(study_file, tmp_path / "separate")
    assert sum(images_through_effnet) == 2 * N_IMAGES  # the two passes the shared one replaces
    separate = _scores(tmp_path / "separate" / "r.duckdb")

    assert [r[:3] for r in shared] == [r[:3] for r in separate]
    a = torch.tensor([r[3] for r in shared])
    b = torch.tensor([r[3] for r in separate])
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_train_mode_dissector_does_not_share(study_file, images_through_effnet, tmp_path):
    text = study_file.read_text(encoding="utf-8").replace(
        "soft_wpmi(top_k=3)", "soft_wpmi(top_k=3) dissector_train_mode true"
    )
    path = tmp_path / "train.study"
    path.write_text(text, encoding="utf-8")
    study, diags = check_file(str(path))
    assert study is not None, diags
    run_study(study, RunOptions(db=tmp_path / "r.duckdb", cache_dir=tmp_path / "cache", quiet=True, reports=False))
    assert sum(images_through_effnet) == 2 * N_IMAGES


def test_dry_run_names_the_shared_pass(study_file):
    study, _ = check_file(str(study_file))
    text = build_plan(study).describe()
    assert "shared" in text and "M" in text
