"""Decoding: PNG/JPEG/TIFF 8/16-bit, DICOM (MONOCHROME1/2, windowing, 16-bit, missing pixels), ROI crop.

DICOM files are generated here with pydicom; expected pixel values come from
straightforward formulas written in this file (the DICOM standard's windowing
equations), not from the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers.images import ramp16, synthetic_breast, write_dicom
from PIL import Image

from dissect_study.engine.probes.base import ImageUnreadable
from dissect_study.engine.probes.decode import (
    decode_any,
    decode_dicom,
    decode_image,
    extract_breast_roi,
    is_dicom_file,
    window_linear,
)

# --------------------------------------------------------------------------- helpers


# --------------------------------------------------------------------------- raster images
def test_png_8bit_grey_and_rgb(tmp_path):
    g = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(g).save(tmp_path / "g.png")
    out = decode_image(tmp_path / "g.png")
    assert out.dtype == np.uint8 and out.shape == (6, 8)
    np.testing.assert_array_equal(out, g)

    rgb = np.stack([g, 255 - g, g // 2], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    out = decode_image(tmp_path / "c.png")
    assert out.shape == (6, 8, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)


def test_png_16bit_keeps_full_range(tmp_path):
    g = (np.arange(30, dtype=np.uint32).reshape(5, 6) * 2000 + 7).astype(np.uint16)
    Image.fromarray(g).save(tmp_path / "g16.png")
    out = decode_image(tmp_path / "g16.png")
    assert out.dtype == np.uint16 and out.shape == (5, 6)
    np.testing.assert_array_equal(out, g)
    assert out.max() > 255  # not truncated to 8 bits


def test_tiff_16bit_and_float(tmp_path):
    g = (np.arange(20, dtype=np.uint32).reshape(4, 5) * 3000).astype(np.uint16)
    Image.fromarray(g).save(tmp_path / "g.tif")
    out = decode_image(tmp_path / "g.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, g)
    f = np.linspace(-1, 1, 20, dtype=np.float32).reshape(4, 5)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tiff")
    out = decode_image(tmp_path / "f.tiff")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, f)


def test_rgba_palette_and_jpeg(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 17
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = decode_image(tmp_path / "a.png")
    assert out.shape == (4, 4, 3) and out[0, 0, 0] == 200

    pal = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4)).convert("P")
    pal.save(tmp_path / "p.png")
    assert decode_image(tmp_path / "p.png").ndim in (2, 3)

    g = np.full((16, 16), 128, np.uint8)
    Image.fromarray(g).save(tmp_path / "j.jpg", quality=95)
    out = decode_image(tmp_path / "j.jpg")
    assert out.shape == (16, 16) and abs(int(out.mean()) - 128) <= 2


def test_unreadable_and_missing_raise_imageunreadable(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ImageUnreadable, match="bad.png"):
        decode_image(tmp_path / "bad.png")
    with pytest.raises(ImageUnreadable, match="not found"):
        decode_image(tmp_path / "nope.png")
    with pytest.raises(ImageUnreadable, match="not found"):
        decode_any(tmp_path / "nope.dcm")


# --------------------------------------------------------------------------- windowing formula
def reference_linear(x, c, w):
    """DICOM PS3.3 C.11.2.1.2.1, written out element by element, output range [0, 1]."""
    out = np.empty(len(x))
    for i, v in enumerate(x):
        if v <= c - 0.5 - (w - 1) / 2:
            out[i] = 0.0
        elif v > c - 0.5 + (w - 1) / 2:
            out[i] = 1.0
        else:
            out[i] = (v - (c - 0.5)) / (w - 1) + 0.5
    return out


@pytest.mark.parametrize("c,w", [(2048, 4096), (1000, 301), (40.5, 2.0), (0, 1001)])
def test_window_linear_matches_standard(c, w):
    x = np.linspace(-500, 5000, 997)
    np.testing.assert_allclose(window_linear(x, c, w), reference_linear(x, c, w), atol=1e-12)


def test_window_exact_and_sigmoid_known_points():
    assert window_linear(np.array([100.0]), 100, 50, "LINEAR_EXACT")[0] == pytest.approx(0.5)
    assert window_linear(np.array([75.0, 125.0]), 100, 50, "LINEAR_EXACT").tolist() == [0.0, 1.0]
    s = window_linear(np.array([100.0, 100 + 50 / 4]), 100, 50, "SIGMOID")
    assert s[0] == pytest.approx(0.5) and s[1] == pytest.approx(1 / (1 + np.exp(-1)))
    with pytest.raises(ValueError):
        window_linear(np.array([1.0]), 0, 0)


# --------------------------------------------------------------------------- DICOM
def test_dicom_monochrome2_16bit_minmax_without_window(tmp_path):
    px = ramp16(hi=60000)
    p = write_dicom(tmp_path / "a.dcm", px)
    out = decode_dicom(p)
    assert out.dtype == np.float32 and out.shape == px.shape
    expected = (px.astype(np.float64) - px.min()) / (px.max() - px.min())
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    px = ramp16()
    m2 = decode_dicom(write_dicom(tmp_path / "m2.dcm", px, "MONOCHROME2", bits_stored=12))
    m1 = decode_dicom(write_dicom(tmp_path / "m1.dcm", px, "MONOCHROME1", bits_stored=12))
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)
    assert m1[0, 0] == pytest.approx(1.0) and m1[-1, -1] == pytest.approx(0.0)


def test_dicom_window_and_rescale(tmp_path):
    px = ramp16(8, 8, hi=4000)
    p = write_dicom(
        tmp_path / "w.dcm",
        px,
        bits_stored=12,
        WindowCenter=1500,
        WindowWidth=1001,
        RescaleSlope=2,
        RescaleIntercept=-1000,
    )
    out = decode_dicom(p)
    hu = px.astype(np.float64) * 2 - 1000  # modality LUT first
    expected = reference_linear(hu.ravel(), 1500, 1001).reshape(px.shape)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert (out == 0).any() and (out == 1).any()  # the window clips both ends here


def test_dicom_multivalued_window_uses_first(tmp_path):
    px = ramp16(hi=3000)
    p = write_dicom(tmp_path / "mv.dcm", px, bits_stored=12, WindowCenter=[1000, 2000], WindowWidth=[500, 100])
    expected = reference_linear(px.astype(float).ravel(), 1000, 500).reshape(px.shape)
    np.testing.assert_allclose(decode_dicom(p), expected, atol=1e-6)


def test_dicom_voi_lut_sequence(tmp_path):
    import pydicom

    px = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], dtype=np.uint16)
    lut = [0, 10, 20, 30, 40, 50, 60, 255]  # 8 entries starting at 0, 8-bit output
    item = pydicom.Dataset()
    item.add_new("LUTDescriptor", "US", [8, 0, 8])
    item.add_new("LUTData", "US", lut)
    p = write_dicom(
        tmp_path / "lut.dcm",
        px,
        bits_stored=8,
        VOILUTSequence=pydicom.Sequence([item]),
        WindowCenter=100,
        WindowWidth=10,
    )  # the LUT takes precedence over the window
    out = decode_dicom(p)
    np.testing.assert_allclose(out, np.array(lut, float).reshape(2, 4) / 255.0, atol=1e-6)


def test_dicom_missing_pixel_data_and_not_dicom(tmp_path):
    p = write_dicom(tmp_path / "empty.dcm", None)
    with pytest.raises(ImageUnreadable, match="no pixel data"):
        decode_dicom(p)
    (tmp_path / "fake.dcm").write_bytes(b"hello world")
    with pytest.raises(ImageUnreadable, match="fake.dcm"):
        decode_dicom(tmp_path / "fake.dcm")


def test_dicom_sniffed_without_suffix(tmp_path):
    px = ramp16()
    p = write_dicom(tmp_path / "IM0001", px)
    assert is_dicom_file(p)
    out = decode_any(p)
    assert out.dtype == np.float32 and out.shape == px.shape
    Image.fromarray(np.zeros((3, 3), np.uint8)).save(tmp_path / "x.png")
    assert not is_dicom_file(tmp_path / "x.png")


# --------------------------------------------------------------------------- Mammo-CLIP offline recipe


@pytest.mark.parametrize("mono1", [False, True])
def test_offline_recipe_crops_border_inverts_and_finds_breast(tmp_path, mono1):
    raw, (r0, r1, c0, c1) = synthetic_breast(mono1)
    p = write_dicom(tmp_path / "b.dcm", raw, "MONOCHROME1" if mono1 else "MONOCHROME2", bits_stored=12)
    out = decode_dicom(p, mammo_clip_offline=True)
    assert out.dtype == np.uint8
    assert out.shape == (r1 - r0, c1 - c0)
    # independent expectation: crop border, (invert), min-max to uint8, then slice the breast box
    x = raw[5:-5, 5:-5].astype(np.float64)
    if mono1:
        x = x.max() - x
    u8 = np.floor((x - x.min()) / (x.max() - x.min()) * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out, u8[r0 - 5 : r1 - 5, c0 - 5 : c1 - 5])


def test_roi_ignores_faint_label_and_keeps_longest_run():
    img = np.zeros((100, 80), np.uint8)
    img[10:90, 30:70] = 150 + (np.arange(80)[:, None] % 5).astype(np.uint8) + (np.arange(40) % 7).astype(np.uint8)
    img[40:60, 25:30] = 30  # faint label touching the breast: <= 40, so background (else the run would start at 25)
    img[45:50, 15:18] = 200  # small bright marker: a shorter, separate run of columns
    out = extract_breast_roi(img)
    assert out.shape == (80, 40)
    np.testing.assert_array_equal(out, img[10:90, 30:70])


def test_roi_blank_image_returned_whole():
    img = np.zeros((10, 10), np.uint8)
    assert extract_breast_roi(img).shape == (10, 10)
