"""Class masks as supervision with any class table: tables per species, both mask layouts, their
checks, and a tiny arabidopsis run trained, evaluated and exported from masks."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_dataset import H, W, make_scene

from s3dgs import classes as K
from s3dgs.errors import S3dgsError
from s3dgs.scene.colmap import SceneError
from s3dgs.scene.dataset import SceneDataset, load_mask

ARA = ("stem", "pedicel", "fruit", "flower", "leaf")


# -- tables ---------------------------------------------------------------------------------------

def test_builtin_tables():
    t = K.load_class_table("tomato")
    assert t is K.TOMATO and t.names == K.CLASSES == ("U", "N", "D", "P")
    assert K.load_class_table(None) is K.TOMATO
    a = K.load_class_table("arabidopsis")
    assert a.names == ARA
    assert len(set(a.colors.values())) == 5 and all(c.meaning for c in a)
    assert a.stem_indices() == [0, 1] and a.main_stem_indices() == [0]
    assert t.main_stem_indices() == [0, 2] and t.stem_indices() == [0, 2, 3]
    assert [c.label for c in a] == [1, 2, 3, 4, 5]
    # the tomato constants are unchanged
    assert K.stem_classes() == [0, 2, 3] and K.main_stem_classes() == [0, 2]
    assert K.stem_classes(ARA) == [0, 1] and K.main_stem_classes(ARA) == [0]
    assert K.class_color("pedicel") == a.colors["pedicel"] and K.class_color("U") == K.CLASS_COLORS["U"]
    assert K.class_color("nothing") == (255, 255, 255)
    with pytest.raises(S3dgsError, match="built-in tables are tomato, arabidopsis"):
        K.load_class_table("potato")


def test_user_table_json(tmp_path):
    spec = {"name": "vine", "classes": [
        {"name": "cane", "color": [10, 20, 30], "meaning": "woody stem", "stem": True, "main_stem": True},
        {"name": "tendril", "color": [1, 2, 3], "stem": True},
        {"name": "leaf", "color": [0, 200, 0]}]}
    p = tmp_path / "vine.json"
    p.write_text(json.dumps(spec))
    t = K.load_class_table(p)
    assert t.name == "vine" and t.names == ("cane", "tendril", "leaf")
    assert t.main_stem_indices() == [0] and t.stem_indices() == [0, 1]
    assert K.ClassTable.from_dict(t.to_dict()) == t  # the round trip config.json relies on
    assert K.class_color("cane", t) == (10, 20, 30)
    # a scene's classes.json naming a built-in table
    (tmp_path / "classes.json").write_text('{"table": "arabidopsis"}')
    assert K.scene_class_table(tmp_path) is K.ARABIDOPSIS
    assert K.scene_class_table(tmp_path / "nowhere") is K.TOMATO


@pytest.mark.parametrize("text, match", [
    ("{not json", "malformed JSON"),
    ('{"table": "potato"}', "unknown class table 'potato'"),
    ('{"name": "x", "classes": []}', "non-empty list"),
    ('{"name": "x", "classes": [{"name": "a b", "color": [1, 2, 3]}]}', "letters, digits"),
    ('{"name": "x", "classes": [{"name": "a", "color": [1, 2]}]}', "color must be"),
    ('{"name": "x", "classes": [{"name": "a", "color": [1, 2, 3]}, {"name": "a", "color": [1, 2, 3]}]}',
     "appears twice"),
    ('{"name": "x", "classes": [{"name": "a", "color": [1, 2, 3], "stem": false, "main_stem": true}]}',
     "main_stem class must also be a stem"),
])
def test_bad_table_files_are_named(tmp_path, text, match):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(S3dgsError, match=match) as e:
        K.load_class_table(p)
    assert str(p) in str(e.value)
    with pytest.raises(S3dgsError, match="class table file not found"):
        K.load_class_table(tmp_path / "missing.json")


def test_class_table_option_is_validated(tmp_path):
    from s3dgs.config import DataConfig
    from s3dgs.errors import UsageError

    DataConfig(class_table="arabidopsis").validate()
    with pytest.raises(UsageError, match="--class-table: unknown class table 'potato'"):
        DataConfig(class_table="potato").validate()


# -- masks ----------------------------------------------------------------------------------------

def _ids(h=H, w=W):
    ids = np.zeros((h, w), np.uint8)
    ids[:, : w // 4] = 1  # stem
    ids[: h // 2, w // 4: w // 2] = 3  # fruit
    ids[h // 2:, w // 4: w // 2] = 5  # leaf
    ids[:, -3:] = 255  # unlabelled
    return ids


def test_id_mask_one_hot_unlabelled_excluded(tmp_path):
    ids = _ids()
    Image.fromarray(ids).save(tmp_path / "f.png")
    t, v = load_mask(tmp_path / "f.png", K.ARABIDOPSIS)
    assert t.shape == (H, W, 5) and v.shape == (H, W)
    assert (v == (ids != 255)).all()
    for k in range(5):
        assert (t[..., k] == (ids == k + 1)).all(), k
    assert t[ids == 0].sum() == 0 and t[ids == 255].sum() == 0
    # resized (nearest): doubled size, the same ids in blocks, no blended ids
    Image.fromarray(np.kron(ids, np.ones((2, 2), np.uint8))).save(tmp_path / "g.png")
    t2, v2 = load_mask(tmp_path / "g.png", K.ARABIDOPSIS, H, W)
    assert (t2 == t).all() and (v2 == v).all()


def test_folder_mask_layout(tmp_path):
    d = tmp_path / "f"
    d.mkdir()
    ids = _ids()
    for k, c in enumerate(ARA):
        if k in (0, 2):  # a class without a file is absent from the frame
            Image.fromarray(((ids == k + 1) * 255).astype(np.uint8)).save(d / f"{c}.png")
    t, v = load_mask(d, K.ARABIDOPSIS)
    assert v.all()
    assert (t[..., 0] == (ids == 1)).all() and (t[..., 2] == (ids == 3)).all()
    assert t[..., [1, 3, 4]].sum() == 0


def test_bad_masks_are_named(tmp_path):
    scene = make_scene(tmp_path / "s", heatmaps=False, depth=False, conf=False)
    (scene / "masks").mkdir()
    stem = "frame_001"
    bad = _ids()
    bad[0, 0] = 7
    Image.fromarray(bad).save(scene / "masks" / f"{stem}.png")
    ds = SceneDataset.from_dir(scene, class_table="arabidopsis", cache="none")
    with pytest.raises(SceneError, match=r"frame_001\.png: class mask holds id\(s\) 7 .*5 classes"):
        ds[[f.stem for f in ds.frames].index(stem)]
    # another aspect ratio
    Image.fromarray(np.zeros((H, H), np.uint8)).save(scene / "masks" / f"{stem}.png")
    with pytest.raises(SceneError, match="another aspect ratio"):
        SceneDataset.from_dir(scene, class_table="arabidopsis")
    # not 8-bit
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(scene / "masks" / f"{stem}.png")
    with pytest.raises(SceneError, match="not 8-bit"):
        SceneDataset.from_dir(scene, class_table="arabidopsis")
    # unknown class file names in the folder layout
    (scene / "masks" / f"{stem}.png").unlink()
    (scene / "masks" / stem).mkdir()
    Image.fromarray(np.zeros((H, W), np.uint8)).save(scene / "masks" / stem / "silique.png")
    with pytest.raises(SceneError, match=r"silique\.png name\(s\) no class of the 'arabidopsis' table"):
        SceneDataset.from_dir(scene, class_table="arabidopsis")


def test_dataset_items_from_masks(tmp_path, caplog):
    scene = make_scene(tmp_path / "s", heatmaps=True, depth=False, conf=True)  # tomato heatmaps, 4 channels
    (scene / "classes.json").write_text('{"table": "arabidopsis"}')
    (scene / "masks").mkdir()
    ids = _ids()
    for i in [0] + list(range(2, 10)):  # every frame but frame_001
        Image.fromarray(np.kron(ids, np.ones((2, 2), np.uint8))).save(scene / "masks" / f"frame_{i:03d}.png")
    conf = json.loads((scene / "confidence.json").read_text())
    conf["frame_002"] = {"fruit": 0.2}  # gates only fruit on that frame
    (scene / "confidence.json").write_text(json.dumps(conf))
    # frame_001 has no mask: its 4-channel tomato heatmap does not fit the 5 arabidopsis classes
    with pytest.raises(SceneError, match=r"frame_001\.npy: heatmap has shape \(30, 40, 4\), expected \[H, W, 5\]"):
        SceneDataset.from_dir(scene, split="all")
    (scene / "heatmaps" / "frame_001.npy").unlink()
    with caplog.at_level("INFO", logger="s3dgs"):
        ds = SceneDataset.from_dir(scene, split="all")
    assert ds.classes == ARA and ds.summary["masks"] == 9
    assert "masks take precedence" in caplog.text and caplog.text.count("masks take precedence") == 1
    by = {f.stem: i for i, f in enumerate(ds.frames)}
    it = ds[by["frame_000"]]
    assert it["semantic_source"] == "mask" and it["has_mask"] and not it["has_heatmap"]
    assert it["heatmap"].shape == (H, W, 5)
    assert torch.equal(it["semantic_valid"], torch.from_numpy(ids != 255))
    assert torch.equal(it["heatmap"][..., 2], torch.from_numpy((ids == 3).astype(np.float32)))
    # confidence: the frame's entry names no arabidopsis class -> 1 for all; frame_002 gates fruit only
    assert it["confidence"].tolist() == [1.0] * 5
    assert ds[by["frame_002"]]["confidence"].tolist() == pytest.approx([1, 1, 0.2, 1, 1])
    # a frame with neither heatmap nor mask is not supervised
    assert ds.frames[by["frame_001"]].semantic_source is None
    assert ds[by["frame_001"]]["semantic_source"] == "" and ds[by["frame_001"]]["heatmap"].sum() == 0


def test_semantic_loss_ignores_unlabelled_pixels():
    from s3dgs.losses import semantic_loss

    g = torch.Generator().manual_seed(0)
    pred = torch.rand(6, 5, 3, generator=g)
    tgt = (torch.rand(6, 5, 3, generator=g) > 0.5).float()
    valid = torch.ones(6, 5, dtype=torch.bool)
    valid[:, :2] = False
    full = semantic_loss(pred, tgt, fg_weight=1.0, valid=valid)
    ref = ((pred - tgt) ** 2)[:, 2:].mean()
    torch.testing.assert_close(full, ref)
    pred2 = pred.clone()
    pred2[:, :2] = 1 - pred2[:, :2]  # unlabelled pixels change nothing
    torch.testing.assert_close(semantic_loss(pred2, tgt, fg_weight=1.0, valid=valid), full)
    assert semantic_loss(pred, tgt, valid=torch.zeros(6, 5, dtype=torch.bool)) == 0


# -- a tiny arabidopsis run -----------------------------------------------------------------------

GT_TO_ARA = {1: 1, 2: 1, 3: 1, 4: 2, 5: 5, 6: 3}  # U, N, D -> stem; P -> pedicel; leaf; fruit


@pytest.fixture(scope="module")
def ara_scene(tiny_scene, tmp_path_factory):
    scene = tmp_path_factory.mktemp("ara") / "scene"
    shutil.copytree(tiny_scene, scene)
    (scene / "confidence.json").unlink()
    (scene / "classes.json").write_text('{"table": "arabidopsis"}')
    (scene / "masks").mkdir()
    for p in sorted((scene / "gt" / "masks").glob("*.png")):
        g = np.asarray(Image.open(p))
        ids = np.zeros_like(g)
        for a, b in GT_TO_ARA.items():
            ids[g == a] = b
        ids[:4] = 255  # a band of unlabelled pixels
        Image.fromarray(ids.astype(np.uint8)).save(scene / "masks" / p.name)
    return scene


def test_tiny_arabidopsis_run_from_masks(ara_scene, tmp_path):
    from plyfile import PlyData

    from s3dgs.evaluate import evaluate_run
    from s3dgs.export import export_classes
    from s3dgs.train import train

    run = tmp_path / "run"
    res = train(scene=ara_scene, out_dir=run, num_iterations=30, warmup_iterations=10, log_every=10,
                progress=False, save_renders=True, sh_degree=0, refine_start_iter=1000, no_depth=True)
    assert res["semantics_used"]
    names = PlyData.read(str(run / "point_cloud.ply"))["vertex"].data.dtype.names
    assert [n for n in names if n.startswith("sem_")] == [f"sem_{c}" for c in ARA]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["classes"] == list(ARA) and cfg["class_table"]["name"] == "arabidopsis"
    assert K.run_class_table(cfg) == K.ARABIDOPSIS
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["sem"] == 0 and rows[-1]["sem"] > 0  # on after the warm-up only
    assert "masks take precedence" in (run / "log.txt").read_text()  # the tiny scene has heatmaps too
    assert any((run / "renders").glob("*_sem.png"))

    m = evaluate_run(run, max_views=1)
    s = m["semantics"]["masks"]
    assert s["available"] and list(s["iou"]) == list(ARA) and s["n_views"] == 1
    finite = [v for v in s["iou"].values() if v is not None]
    assert finite and all(0 <= v <= 1 for v in finite) and s["miou"] == pytest.approx(np.mean(finite))
    assert json.loads((run / "metrics.json").read_text())["semantics"]["masks"]["miou"] == pytest.approx(s["miou"])

    counts = export_classes(run / "point_cloud.ply", run / "classes", threshold=0.0, min_opacity=0.0)
    assert list(counts) == list(ARA)
    assert (run / "classes" / "pedicel.ply").exists()

    from s3dgs.phenotype import run_phenotype

    ph = run_phenotype(run, write=True)  # a model without tomato classes measures without crashing
    assert isinstance(ph, dict) and (run / "phenotypes.json").exists()

    from s3dgs.report import build_report_html

    (run / "renders").mkdir(exist_ok=True)
    html = build_report_html(run, ara_scene)
    assert "#%02x%02x%02x" % K.ARABIDOPSIS.colors["pedicel"] in html  # coloured from the run's table


def test_a_run_trained_without_semantics_scores_no_classes(ara_scene, tmp_path):
    """--no-semantics leaves the logits untrained: eval says so instead of scoring IoU 0."""
    from s3dgs.evaluate import evaluate_run
    from s3dgs.train import train

    run = tmp_path / "run"
    train(scene=ara_scene, out_dir=run, num_iterations=5, log_every=5, progress=False, save_renders=False,
          sh_degree=0, refine_start_iter=1000, no_depth=True, no_semantics=True)
    s = evaluate_run(run, max_views=1)["semantics"]
    assert s["available"] is False and "--no-semantics" in s["reason"]
