"""Our lukemelas-compatible EfficientNet against the shared block tables and key maps,
and the tiny config's forward against a hand-written functional forward."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from dissect_study.engine.models.efficientnet import (
    CONFIGS,
    EfficientNet,
    block_specs,
    detect_config,
    lukemelas_to_timm,
    same_padding,
)


@pytest.mark.parametrize("variant", ["b5", "b2"])
def test_block_table_matches_shared_json(shared_dir, variant):
    rows = json.loads((shared_dir / f"data/mammo_clip/effnet_{variant}_blocks.json").read_text())
    specs = block_specs(CONFIGS[variant])
    assert len(specs) == len(rows)
    for r, s in zip(rows, specs):
        assert (s.lukemelas_name, s.timm_name) == (r["lukemelas_name"], r["timm_name"])
        assert (s.in_channels, s.out_channels, s.expanded, s.se_channels) == (
            r["in_channels"],
            r["out_channels"],
            r["expanded_channels"],
            r["se_channels"],
        )
        assert (s.kernel, s.stride, s.residual) == (r["kernel_size"], r["block_stride"], r["residual_add"])
        assert list(s.padding) == r["dw_padding_used_by_mammoclip_LRTB"], s.index


@pytest.mark.parametrize("variant,n_params", [("b5", 28_340_784), ("b2", 7_700_994)])
def test_keys_shapes_order_and_timm_names_match_key_map(shared_dir, variant, n_params):
    km = json.loads((shared_dir / f"data/mammo_clip/effnet_{variant}_key_map.json").read_text())["map"]
    model = EfficientNet(CONFIGS[variant])
    sd = model.state_dict()
    assert list(sd) == [e["lukemelas_key"] for e in km]
    for e in km:
        assert list(sd[e["lukemelas_key"]].shape) == e["shape"]
        assert lukemelas_to_timm(e["lukemelas_key"], model.specs) == e["timm_key"]
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert detect_config(sd).name == variant


def test_same_padding_known_values():
    # docs/CHECKPOINTS.md: the stem pads (0,1,0,1) for 456; block 13's depthwise (1,1,1,1)
    assert same_padding((456, 456), 3, 2) == (0, 1, 0, 1)
    assert same_padding((57, 57), 3, 2) == (1, 1, 1, 1)
    assert same_padding((190, 114), 3, 2) == (0, 1, 0, 1)  # dynamic TF-SAME at 1520x912 differs
    assert same_padding((10, 10), 5, 1) == (2, 2, 2, 2)


def test_padding_is_fixed_for_nominal_size_not_input():
    m = EfficientNet(CONFIGS["b5"])
    assert m._conv_stem.pad == (0, 1, 0, 1)
    assert m._blocks[13]._depthwise_conv.pad == (1, 1, 1, 1)
    assert m._blocks[27]._depthwise_conv.pad == (2, 2, 2, 2)


def _bn(x, prefix, sd):
    return F.batch_norm(
        x,
        sd[prefix + ".running_mean"],
        sd[prefix + ".running_var"],
        sd[prefix + ".weight"],
        sd[prefix + ".bias"],
        training=False,
        eps=1e-3,
    )


def _manual_forward(x, sd, specs, stem_pad):
    """Independent functional EfficientNet forward from the state dict and the spec table."""
    x = F.silu(_bn(F.conv2d(F.pad(x, stem_pad), sd["_conv_stem.weight"], stride=2), "_bn0", sd))
    for s in specs:
        p = f"_blocks.{s.index}."
        h = x
        if s.expand_ratio != 1:
            h = F.silu(_bn(F.conv2d(h, sd[p + "_expand_conv.weight"]), p + "_bn0", sd))
        h = F.conv2d(F.pad(h, s.padding), sd[p + "_depthwise_conv.weight"], stride=s.stride, groups=h.shape[1])
        h = F.silu(_bn(h, p + "_bn1", sd))
        g = h.mean(dim=(2, 3), keepdim=True)
        g = F.conv2d(
            F.silu(F.conv2d(g, sd[p + "_se_reduce.weight"], sd[p + "_se_reduce.bias"])),
            sd[p + "_se_expand.weight"],
            sd[p + "_se_expand.bias"],
        )
        h = torch.sigmoid(g) * h
        h = _bn(F.conv2d(h, sd[p + "_project_conv.weight"]), p + "_bn2", sd)
        x = h + x if (s.stride == 1 and s.in_channels == s.out_channels) else h
    x = F.silu(_bn(F.conv2d(x, sd["_conv_head.weight"]), "_bn1", sd))
    return x.mean(dim=(2, 3))


def test_tiny_forward_matches_functional_reference():
    torch.manual_seed(0)
    m = EfficientNet(CONFIGS["tiny"]).eval()
    with torch.no_grad():
        for k, v in m.state_dict().items():
            if k.endswith("running_var"):
                v.copy_(1 + torch.rand_like(v))
            elif v.is_floating_point():
                v.copy_(torch.randn_like(v) * (0.5 if v.dim() > 1 else 0.2))
    x = torch.randn(2, 3, 50, 38)
    sd = m.state_dict()
    stem_pad = same_padding((64, 64), 3, 2)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _manual_forward(x, sd, m.specs, stem_pad), atol=1e-5, rtol=1e-5)
    assert m(x).shape == (2, 32)
    # hooks see block outputs after the residual add, no activation
    seen = {}
    m._blocks[2].register_forward_hook(lambda _m, _i, o: seen.update(b2=o))
    with torch.no_grad():
        m(x)
    assert seen["b2"].shape[1] == 16 and (seen["b2"] < 0).any()


def test_drop_connect_only_in_train_mode():
    m = EfficientNet(CONFIGS["tiny"])
    x = torch.randn(4, 3, 32, 32)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(x), m(x))
    assert m._blocks[2].drop_rate == pytest.approx(0.2 * 2 / 4)
    assert math.isclose(CONFIGS["b5"].drop_connect, 0.2)
