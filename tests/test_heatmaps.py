"""Keypoints -> skeleton heatmaps, checked pixel by pixel on hand-made detections."""

import json

import numpy as np
import pytest

from s3dgs import CLASSES
from s3dgs.scene.heatmaps import KeypointFileError, keypoints_to_heatmaps, make_heatmaps

U, N, D, P = (CLASSES.index(c) for c in "UNDP")


def _pred(kps, w=50.0, h=40.0, x=100.0, y=100.0):
    return {"x": x, "y": y, "width": w, "height": h, "confidence": 0.9, "class": "node",
            "keypoints": [{"class": c, "x": float(px), "y": float(py), "confidence": cf}
                          for c, px, py, cf in kps]}


def test_vertical_line_width_and_channel():
    # U at (100, 40), N at (100, 100): a vertical line in channel U, thickness 0.4 * 50 = 20 px.
    pred = _pred([("U", 100, 40, 0.9), ("N", 100, 100, 0.9)])
    heat, conf = keypoints_to_heatmaps([pred], 200, 160, blur_sigma=0, hotspot_sigma=3)
    assert heat.shape == (160, 200, 4) and heat.dtype == np.float32
    row = heat[70, :, U]  # mid-line, far from the hotspots
    on = np.nonzero(row > 0.5)[0]
    # pixel centres j + 0.5 within 10 px of x = 100: j in [90, 99] -> 10 + 10 = 20 pixels
    assert on.min() == 90 and on.max() == 109 and len(on) == 20
    assert np.all(row[90:110] == 1.0) and row[89] < 1e-6 and row[110] < 1e-6
    # nothing in the D and P channels (no D or P keypoint), hotspot of N in channel N only
    assert heat[..., D].max() == 0 and heat[..., P].max() == 0
    assert heat[99, 99, N] > 0.9 and heat[70, 100, N] == 0
    assert conf == {"U": 0.9, "N": 0.9, "D": 0.0, "P": 0.0}


def test_peduncle_line_uses_box_height_and_min_width():
    # N-P horizontal; thickness 0.15 * box height = 0.15 * 20 = 3 -> min 5 px.
    pred = _pred([("N", 40, 50.5, 0.9), ("P", 160, 50.5, 0.8)], h=20.0)
    heat, _ = keypoints_to_heatmaps([pred], 200, 100, blur_sigma=0, hotspot_sigma=2)
    col = heat[:, 100, P]
    on = np.nonzero(col > 0.5)[0]
    assert list(on) == [48, 49, 50, 51, 52]  # centres 48.5..52.5 within 2.5 px of y = 50.5
    assert heat[:, 100, U].max() == 0 and heat[:, 100, D].max() == 0
    # a taller box gives a thicker line: 0.15 * 100 = 15 px
    pred = _pred([("N", 40, 50.5, 0.9), ("P", 160, 50.5, 0.8)], h=100.0)
    heat, _ = keypoints_to_heatmaps([pred], 200, 100, blur_sigma=0, hotspot_sigma=2)
    assert (heat[:, 100, P] > 0.5).sum() == 15


def test_nd_line_goes_to_channel_d():
    pred = _pred([("N", 50, 20, 0.9), ("D", 50, 120, 0.7)], w=30.0)
    heat, conf = keypoints_to_heatmaps([pred], 100, 150, blur_sigma=0, hotspot_sigma=2)
    assert (heat[70, :, D] > 0.5).sum() == 12  # 0.4 * 30
    assert heat[70, :, U].max() == 0
    assert conf["D"] == 0.7


def test_hotspot_peak_and_sigma():
    # a lone keypoint: Gaussian of peak 1 at its position, exp(-1/2) one sigma away
    pred = _pred([("D", 80.5, 60.5, 0.95)])
    heat, _ = keypoints_to_heatmaps([pred], 160, 120, blur_sigma=0, hotspot_sigma=20)
    ch = heat[..., D]
    assert np.unravel_index(ch.argmax(), ch.shape) == (60, 80)
    assert ch[60, 80] == pytest.approx(1.0)
    assert ch[60, 100] == pytest.approx(np.exp(-0.5), abs=1e-4)
    assert ch[80, 80] == pytest.approx(np.exp(-0.5), abs=1e-4)
    # with the default blur the peak stays where it was and the channel is normalised
    heat, _ = keypoints_to_heatmaps([pred], 160, 120)
    ch = heat[..., D]
    assert np.unravel_index(ch.argmax(), ch.shape) == (60, 80) and ch.max() == pytest.approx(1.0)


def test_low_confidence_keypoints_ignored_but_reported():
    pred = _pred([("U", 100, 40, 0.3), ("N", 100, 100, 0.9)])
    heat, conf = keypoints_to_heatmaps([pred], 200, 160, hotspot_sigma=3)
    assert heat[..., U].max() == 0  # no U hotspot, no U-N line
    assert conf["U"] == pytest.approx(0.3)


def test_blur_keeps_range_and_softens_edges():
    pred = _pred([("U", 100, 40, 0.9), ("N", 100, 100, 0.9)])
    heat, _ = keypoints_to_heatmaps([pred], 200, 160, blur_sigma=3, hotspot_sigma=3)
    assert heat.min() >= 0 and heat.max() <= 1 and heat[..., U].max() == pytest.approx(1.0)
    row = heat[70, :, U]
    assert row[100] > 0.95 and 0.05 < row[110] < 0.95 and row[125] < 0.01


def test_make_heatmaps_writes_files(tmp_path):
    kd = tmp_path / "kp"
    kd.mkdir()
    doc = {"image": {"width": 64, "height": 48},
           "predictions": [_pred([("N", 30, 20, 0.8), ("P", 50, 20, 0.6)], x=30, y=20)]}
    (kd / "frame_001.json").write_text(json.dumps(doc))
    (kd / "frame_002.json").write_text(json.dumps({"image": {"width": 64, "height": 48}, "predictions": []}))
    conf = make_heatmaps(kd, tmp_path / "scene", progress=False)
    h = np.load(tmp_path / "scene" / "heatmaps" / "frame_001.npy")
    assert h.shape == (48, 64, 4) and h[..., P].max() == pytest.approx(1.0, abs=1e-3)
    assert np.load(tmp_path / "scene" / "heatmaps" / "frame_002.npy").max() == 0
    on_disk = json.loads((tmp_path / "scene" / "confidence.json").read_text())
    assert on_disk == conf
    assert on_disk["frame_001"] == {"U": 0.0, "N": 0.8, "D": 0.0, "P": 0.6}
    assert on_disk["frame_002"] == {"U": 0.0, "N": 0.0, "D": 0.0, "P": 0.0}


@pytest.mark.parametrize("text, words", [
    ("{not json", "malformed JSON"),
    ('{"boxes": []}', "predictions"),
    ('{"predictions": [{"x": 1, "y": 2, "width": 3}]}', "height"),
    ('{"predictions": [{"x": 1, "y": 2, "width": 3, "height": 4, '
     '"keypoints": [{"class": "Q", "x": 1, "y": 1}]}]}', "class"),
    ('{"predictions": [{"x": "a", "y": 2, "width": 3, "height": 4}]}', "number"),
])
def test_bad_json_names_the_file(tmp_path, text, words):
    kd = tmp_path / "kp"
    kd.mkdir()
    (kd / "bad_frame.json").write_text(text)
    with pytest.raises(KeypointFileError) as err:
        make_heatmaps(kd, tmp_path / "scene", size=(32, 24), progress=False)
    assert "bad_frame.json" in str(err.value) and words in str(err.value)


def test_missing_size_is_explained(tmp_path):
    kd = tmp_path / "kp"
    kd.mkdir()
    (kd / "f.json").write_text('{"predictions": []}')
    with pytest.raises(KeypointFileError, match="image size unknown"):
        make_heatmaps(kd, tmp_path / "scene", progress=False)
