"""One table of classes drives every name, label id and colour (report, exports, ground truth)."""

import numpy as np

from s3dgs import classes as K


def test_the_table_is_the_one_source():
    import s3dgs
    from s3dgs import metrics
    from s3dgs.scene import groundtruth, synth_plant

    assert s3dgs.CLASSES == K.CLASSES == metrics.CLASS_NAMES == ("U", "N", "D", "P")
    assert synth_plant.LABELS is K.GT_LABEL_NAMES and groundtruth.LABELS is K.GT_LABEL_NAMES
    assert [K.GT_LABELS[c] for c in K.CLASSES] == [1, 2, 3, 4]
    assert len({c.color for c in K.CLASS_TABLE}) == len(K.CLASS_TABLE)  # every class its own colour
    assert K.stem_classes() == [0, 2, 3]  # U, D, P


def test_report_and_exports_draw_the_table_colours(monkeypatch):
    """Change a class's colour in the table: the report's legend and an export overlay follow."""
    from s3dgs import export, report

    new = {**K.CLASS_COLORS, "P": (12, 34, 56)}
    monkeypatch.setattr(K, "CLASS_COLORS", new)
    monkeypatch.setattr(report, "CLASS_COLOURS", {k: "#%02x%02x%02x" % v for k, v in new.items()})
    assert report.CLASS_COLOURS["P"] == "#0c2238"
    img = np.zeros((2, 2, 3), np.uint8)
    probs = np.zeros((2, 2, 4), np.float32)
    probs[..., 3] = 0.9  # every pixel P
    out = export.semantic_overlay(img, probs, K.CLASSES)
    np.testing.assert_allclose(out[0, 0], np.round(0.65 * np.array((12, 34, 56))), atol=1)
    # and by default both use the table's own P colour (it was green in one and magenta in the other)
    monkeypatch.undo()
    assert report.CLASS_COLOURS["P"] == "#%02x%02x%02x" % K.CLASS_COLORS["P"]
    np.testing.assert_allclose(export.semantic_overlay(img, probs, K.CLASSES)[0, 0],
                               np.round(0.65 * np.array(K.CLASS_COLORS["P"])), atol=1)
