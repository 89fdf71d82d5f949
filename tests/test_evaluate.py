"""`s3dgs eval` (issue 7 item 1) on a short synthetic run and on constructed Gaussians with known
answers, and the depth study end to end in its tiny form."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from s3dgs.evaluate import (evaluate_run, format_table, geometry_tolerances, heatmap_iou, plant_region,
                            sample_plant_surface)
from s3dgs.gaussians.model import save_ply
from s3dgs.scene.groundtruth import load_ground_truth

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("U", "N", "D", "P")


def _stem_gaussians(gt, drop=None):
    """Gaussians on every true stem centreline (spacing a quarter radius), opaque, of the stem's
    class. `drop(stem_index, t) -> bool` removes some (t = arc parameter in [0, 1])."""
    means, cls = [], []
    for i, s in enumerate(gt.stems):
        pts, rad = s["points"], np.broadcast_to(np.asarray(s["radius"]).reshape(-1), (len(s["points"]),))
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        cum = np.concatenate([[0], np.cumsum(seg)])
        step = 0.25 * float(rad.min())
        t = np.linspace(0, cum[-1], max(2, int(np.ceil(cum[-1] / step)) + 1))
        x = np.stack([np.interp(t, cum, pts[:, k]) for k in range(3)], 1)
        keep = np.ones(len(t), bool) if drop is None else ~np.array([drop(i, u) for u in t / cum[-1]])
        means.append(x[keep])
        # a stem of a trained class gets Gaussians of that class; a petiole (leaf tissue) none
        cls += [CLASSES.index(s["class"]) if s["class"] in CLASSES else -1] * int(keep.sum())
    means = torch.tensor(np.concatenate(means), dtype=torch.float32)
    n = len(means)
    sem = torch.full((n, 4), -6.0)
    labelled = torch.tensor(cls) >= 0
    sem[torch.arange(n)[labelled], torch.tensor(cls)[labelled]] = 6.0
    return {"means": means, "scales": torch.full((n, 3), float(np.log(1e-3))),
            "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), "opacities": torch.full((n,), 5.0),
            "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 0, 3), "semantics": sem}


def _fake_run(tmp_path, scene, params, name="run"):
    run = tmp_path / name
    run.mkdir()
    save_ply(run / "point_cloud.ply", params, CLASSES)
    (run / "config.json").write_text(json.dumps({"scene": str(scene), "test_every": 8, "sh_degree": 0}))
    return run


def test_gaussians_on_true_stems_cover_them_without_floaters(tiny_scene, tmp_path):
    gt = load_ground_truth(tiny_scene)
    run = _fake_run(tmp_path, tiny_scene, _stem_gaussians(gt))
    m = evaluate_run(run, max_views=1)
    g = m["geometry"]
    assert g["available"]
    assert g["stems"]["covered_fraction"] > 0.99
    assert g["stems"]["breaks"] == 0
    assert g["floaters"]["fraction"] == 0.0
    # centres on the centreline lie one radius inside the surface
    assert g["chamfer"]["accuracy_m"] <= 1.01 * float(max(np.max(s["radius"]) for s in gt.stems))
    assert m["cost"]["available"] is False and m["cost"]["gaussians"] == len(_stem_gaussians(gt)["means"])
    assert json.loads((run / "metrics.json").read_text())["geometry"]["tolerances"]["floater_tol_m"] > 0
    # the flat headline figures the benchmarks tabulate
    from s3dgs.evaluate import headline

    h = headline(m)
    assert h["floaters"] == 0.0 and h["stem_cover_class"] == g["stems"]["covered_fraction"]
    assert h["chamfer_mm"] == 1000 * g["chamfer"]["chamfer_m"] and h["held_out_views"] == 1


def test_gap_is_a_break_and_far_gaussian_a_floater(tiny_scene, tmp_path):
    gt = load_ground_truth(tiny_scene)
    tol = geometry_tolerances(gt)
    lengths = [np.linalg.norm(np.diff(s["points"], axis=0), axis=1).sum() if s["class"] in CLASSES else 0.0
               for s in gt.stems]  # the longest stem of a trained class
    longest = int(np.argmax(lengths))
    params = _stem_gaussians(gt, drop=lambda i, t: i == longest and 0.3 < t < 0.7)
    # one opaque Gaussian inside the plant's region but far from every surface
    lo, hi = plant_region(gt, tol)
    grid = np.stack(np.meshgrid(*[np.linspace(lo[i], hi[i], 11)[1:-1] for i in range(3)]), -1).reshape(-1, 3)
    d = gt.distance_to_surface(grid)
    far = torch.tensor(grid[np.argmax(d)][None], dtype=torch.float32)
    assert d.max() > tol["floater_tol_m"]
    for k, v in params.items():
        params[k] = torch.cat([v, v[:1]])
    params["means"][-1] = far[0]
    run = _fake_run(tmp_path, tiny_scene, params)
    g = evaluate_run(run, max_views=1)["geometry"]
    assert g["stems"]["breaks"] >= 1 and g["stems"]["n_broken_stems"] == 1
    assert 0.8 < g["stems"]["covered_fraction"] < 1.0
    assert g["floaters"]["n_floaters"] == 1 and g["floaters_all"]["n_floaters"] == 1
    assert g["floaters"]["fraction"] == pytest.approx(1 / len(params["means"]), rel=1e-3)


def test_surface_samples_lie_on_the_plant(tiny_scene):
    gt = load_ground_truth(tiny_scene)
    s = sample_plant_surface(gt, n=2000)
    assert len(s) > 1500
    assert np.all(gt.plant_distance(s) < 1e-5)


def test_eval_cli_on_short_synthetic_run(tiny_scene, tmp_path, capsys):
    from s3dgs.cli import main
    from s3dgs.train import train

    run = tmp_path / "run"
    train(scene=tiny_scene, out_dir=run, num_iterations=30, warmup_iterations=10,
          log_every=10, progress=False, save_renders=False, sh_degree=1,
          sh_degree_interval=20, refine_start_iter=10, refine_every=10,
          reset_every=10_000, num_threads=2)
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "mIoU" in out and "Chamfer" in out
    m = json.loads((run / "metrics.json").read_text())
    assert m["views"]["n"] == 2  # tiny preset: 10 views, every 8th held out
    assert 5 < m["images"]["psnr"] < 60 and 0 < m["images"]["ssim"] <= 1
    assert m["images"]["lpips"] is None or m["images"]["lpips"] >= 0
    for group in ("depth", "semantics", "geometry", "cost"):
        assert m[group]["available"], group
    assert 0 <= m["depth"]["abs_rel"] and 0 <= m["depth"]["delta1"] <= 1 and m["depth"]["scale"] > 0
    assert set(m["semantics"]["iou"]) == set(CLASSES)
    hm = m["semantics"]["heatmaps"]  # the supervision scored on the same views
    assert hm["available"] and hm["n_views"] == 2 and 0 <= hm["miou"] <= 1
    assert "mIoU of the training heatmaps" in format_table(m)
    assert 0 <= m["geometry"]["floaters"]["fraction"] <= 1
    assert m["cost"]["iterations"] == 30 and m["cost"]["gaussians"] > 0 and m["cost"]["train_time_s"] > 0
    assert "Gaussians" in format_table(m)


def test_eval_without_ground_truth_or_run(tmp_path, tiny_scene):
    from s3dgs.cli import main

    assert main(["eval", str(tmp_path / "nothing")]) == 1  # one message through s3dgs.cli, exit 1
    # a scene without gt/: geometry, depth and semantics say why they are absent
    import shutil

    scene = tmp_path / "nogt"
    shutil.copytree(tiny_scene, scene, ignore=shutil.ignore_patterns("gt"))
    gt = load_ground_truth(tiny_scene)
    run = _fake_run(tmp_path, scene, _stem_gaussians(gt))
    m = evaluate_run(run, max_views=1)
    for group in ("depth", "semantics", "geometry"):
        assert m[group]["available"] is False and m[group]["reason"]
    assert m["images"]["psnr"] is not None
    from s3dgs.evaluate import headline

    h = headline(m)
    assert h["psnr"] == m["images"]["psnr"] and h["floaters"] is None and h["chamfer_mm"] is None


def test_depth_study_tiny_end_to_end(tmp_path):
    """The study script in its tiny form: makes the scene, trains and evaluates rows (a subset here,
    to keep the suite fast; `--tiny` alone runs every row), writes the table, JSON and plots."""
    from conftest import load_benchmark

    study = load_benchmark("depth_study")
    out = tmp_path / "study"
    rc = study.main([str(tmp_path / "scene"), "--tiny", "--iterations", "8", "--threads", "2", "--out", str(out),
                     "--only", "rgb,disparity,prior_worse", "--seeds", "1"])
    assert rc == 0
    r = json.loads((out / "study.json").read_text())
    assert [row["name"] for row in r["rows"]] == ["rgb", "disparity", "prior_worse"]
    # --seeds: rgb and disparity (also the best row here) trained again with seed 1
    assert set(r["seed_spread"]) == {"rgb", "disparity"}
    sp = r["seed_spread"]["rgb"]
    assert sp["seeds"] == [0, 1] and len(sp["psnr"]) == 2 and sp["psnr"][0] == r["rows"][0]["psnr"]
    assert json.loads((out / "runs" / "rgb@seed1" / "config.json").read_text())["train"]["seed"] == 1
    for row in r["rows"]:
        assert row["psnr"] > 5 and row["floaters"] is not None and row["depth_abs_rel"] is not None
    errs = r["prior_abs_rel_after_affine_fit"]
    assert errs["prior_worse"] > errs["scene"]  # the worse prior is worse
    md = (out / "study.md").read_text()
    assert "| rgb |" in md and "| prior_worse |" in md and "Training-seed spread" in md
    assert (out / "plots" / "rows.png").stat().st_size > 0
    # the regenerated copy shares everything but its depths
    copy = out / "scenes" / "prior_worse"
    assert (copy / "images").is_symlink() and not (copy / "depths").is_symlink()


def test_depth_study_addons_take_effect_on_the_seed_row(tmp_path):
    """When the seed's literal loss (which takes no options) is the best base row, the add-on rows
    use the same formula through the configurable loss, so the option really is switched on."""
    from conftest import load_benchmark

    study = load_benchmark("depth_study")
    out = tmp_path / "study"
    assert study.main([str(tmp_path / "scene"), "--tiny", "--iterations", "4", "--threads", "2",
                       "--out", str(out), "--only", "seed,best+edge_aware"]) == 0
    rows = {r["name"]: r for r in json.loads((out / "study.json").read_text())["rows"]}
    assert rows["seed"]["config"]["depth_loss"] == "seed"
    cfg = rows["best+edge_aware"]["config"]
    assert cfg["depth_loss"] == "prior" and cfg["depth_space"] == "depth" and cfg["depth_edge_aware"]
    assert cfg["depth_alignment"] == "per_view" and cfg["depth_robust"] is False
    assert "seed's formula through depth_loss=prior" in rows["best+edge_aware"]["note"]


def test_real_scene_skips_when_absent(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("real_scene", ROOT / "benchmarks" / "real_scene.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--scene", str(tmp_path / "absent"), "--out", str(tmp_path / "run")]) == 0
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


def test_heatmap_iou_scores_the_supervision_against_the_true_masks(tmp_path):
    """Heatmaps equal to the true masks score 1; a heatmap on half of a class's pixels scores 0.5
    for that class; leaf pixels count as background; a missing heatmap says which file."""
    from PIL import Image

    from s3dgs.classes import GT_LABELS

    (tmp_path / "heatmaps").mkdir()
    (tmp_path / "gt" / "masks").mkdir(parents=True)
    mask = np.zeros((8, 12), np.uint8)
    for k, c in enumerate(CLASSES):
        mask[2 * k:2 * k + 2, 2:10] = GT_LABELS[c]
    mask[0, 0] = GT_LABELS["leaf"]
    Image.fromarray(mask).save(tmp_path / "gt" / "masks" / "a.png")
    heat = np.stack([(mask == GT_LABELS[c]).astype(np.float16) for c in CLASSES], -1)
    np.save(tmp_path / "heatmaps" / "a.npy", heat)
    r = heatmap_iou(tmp_path, ["a"])
    assert r["available"] and r["n_views"] == 1
    assert r["miou"] == pytest.approx(1.0) and all(v == pytest.approx(1.0) for v in r["iou"].values())
    half = heat.copy()
    half[:, 6:, 0] = 0  # U drawn on half its pixels
    np.save(tmp_path / "heatmaps" / "a.npy", half)
    r = heatmap_iou(tmp_path, ["a"])
    assert r["iou"]["U"] == pytest.approx(0.5) and r["iou"]["N"] == pytest.approx(1.0)
    # in the run's class order, and at the evaluated resolution (nearest)
    r = heatmap_iou(tmp_path, ["a"], classes=["D", "U"], shape=(4, 6))
    assert list(r["iou"]) == ["D", "U"] and r["iou"]["D"] == pytest.approx(1.0)
    r = heatmap_iou(tmp_path, ["a", "b"])
    assert not r["available"] and "b.npy" in r["reason"]
