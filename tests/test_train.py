"""The trainer: loss goes down, Gaussians grow, the opacity reset fires, resume is exact, PLY I/O,
the seed's train(...) call, and the bad states."""

import json
import shutil

import numpy as np
import pytest
import torch

from s3dgs.gaussians.model import init_params, load_ply, save_ply
from s3dgs.gaussians.strategy import DefaultStrategy

FAST = dict(log_every=10, progress=False, save_renders=False, sh_degree=1, sh_degree_interval=20,
            refine_start_iter=30, refine_every=30, reset_every=10_000)


def _strategy_case(n=50):
    params = init_params(np.random.default_rng(0).normal(size=(n, 3)), np.full((n, 3), 200, np.uint8))
    with torch.no_grad():
        params["opacities"].fill_(2.0)  # sigmoid ~ 0.88
    opts = {k: torch.optim.Adam([{"params": params[k], "lr": 1e-3, "name": k}]) for k in params.keys()}
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    info = {"width": 10, "height": 10, "n_cameras": 1, "radii": torch.ones(1, n, 2, dtype=torch.int32),
            "gaussian_ids": None, "means2d": means2d}
    (means2d.sum() * 0).backward()
    means2d.absgrad = torch.zeros_like(means2d)
    return params, opts, info


def test_opacity_reset_fires_despite_gsplat_153_bug():
    from gsplat.strategy import DefaultStrategy as Upstream

    for cls, expect_reset in ((Upstream, False), (DefaultStrategy, True)):
        params, opts, info = _strategy_case()
        s = cls(reset_every=30, refine_start_iter=1000, refine_stop_iter=5000, absgrad=True)
        state = s.initialize_state()
        s.step_post_backward(params, opts, state, 30, info)
        reset = bool((torch.sigmoid(params["opacities"]) <= s.prune_opa * 2 + 1e-6).all())
        assert reset == expect_reset, cls
    assert state["n_resets"] == 1


def test_ply_round_trip_standard_fields(tmp_path):
    from plyfile import PlyData

    params = init_params(np.random.default_rng(1).normal(size=(20, 3)),
                         np.random.default_rng(2).integers(0, 255, (20, 3)).astype(np.uint8), sh_degree=2)
    with torch.no_grad():
        params["shN"].normal_()
        params["semantics"].normal_()
    save_ply(tmp_path / "p.ply", params)
    names = PlyData.read(str(tmp_path / "p.ply"))["vertex"].data.dtype.names
    for f in ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_2", "f_rest_0", "f_rest_23", "opacity",
              "scale_0", "scale_2", "rot_0", "rot_3", "sem_U", "sem_N", "sem_D", "sem_P"]:
        assert f in names, f
    back, classes = load_ply(tmp_path / "p.ply")
    assert classes == ("U", "N", "D", "P")
    for k, v in params.items():
        torch.testing.assert_close(back[k], v.detach().reshape(back[k].shape), rtol=0, atol=1e-6)


# -- end-to-end on the tiny synthetic plant ---------------------------------------------------------

def _train(scene, out, **kw):
    from s3dgs.train import train

    args = dict(FAST)
    args.update(kw)
    return train(scene=scene, out_dir=out, **args)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_short_run_learns_and_densifies(tiny_scene, tmp_path):
    res = _train(tiny_scene, tmp_path / "run", num_iterations=120, warmup_iterations=60,
                 reset_every=100, save_renders=True)
    rows = _jsonl(tmp_path / "run" / "metrics.jsonl")
    before_reset = [r for r in rows if r["iter"] <= 100]
    assert before_reset[-1]["psnr"] > rows[0]["psnr"] + 1.0
    assert before_reset[-1]["rgb"] < rows[0]["rgb"]
    assert rows[-1]["sem"] > 0 and rows[0]["sem"] == 0  # semantic term only after the warm-up
    assert rows[-1]["depth"] > 0
    assert max(r["gaussians"] for r in rows) > rows[0]["gaussians"]
    assert res["n_opacity_resets"] == 1
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "Iter   120 | Loss: " in log and "(RGB: " in log and "Depth: " in log and "lambda_sem: 0.200" in log
    assert (tmp_path / "run" / "point_cloud.ply").exists()
    assert (tmp_path / "run" / "ckpts" / "ckpt_120.pt").exists()
    assert any((tmp_path / "run" / "renders").glob("*_depth.png"))
    assert any((tmp_path / "run" / "renders").glob("*_sem.png"))


def test_each_cpu_backend_trains_to_the_same_psnr(tiny_scene, tmp_path):
    """The native kernels and the torch reference train the same model: the same seed, the same
    schedule (densification included), PSNR over the last iterations within noise of each other."""
    psnr = {}
    for backend in ("native", "torch"):
        _train(tiny_scene, tmp_path / backend, num_iterations=80, warmup_iterations=40, backend=backend, seed=3)
        rows = _jsonl(tmp_path / backend / "metrics.jsonl")
        assert rows[-1]["psnr"] > rows[0]["psnr"] + 1.0, backend  # each one learns
        psnr[backend] = rows[-1]["psnr"]
    # float32 sums in another order: the runs part slowly, not by whole decibels
    assert abs(psnr["native"] - psnr["torch"]) < 0.5, psnr


def test_resume_equals_uninterrupted(tiny_scene, tmp_path):
    kw = dict(num_iterations=40, ckpt_every=20, warmup_iterations=20, reset_every=35, refine_start_iter=10,
              refine_every=10)
    _train(tiny_scene, tmp_path / "a", **kw)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "ckpts" / "ckpt_40.pt").unlink()
    (tmp_path / "b" / "point_cloud.ply").unlink()
    res = _train(tiny_scene, tmp_path / "b", resume=True, **kw)
    a = torch.load(tmp_path / "a" / "ckpts" / "ckpt_40.pt", weights_only=False)["params"]
    b = res["params"]
    assert set(a) == set(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        torch.testing.assert_close(b[k].detach(), a[k], rtol=0, atol=1e-6)
    assert "resume: continuing from ckpt_20.pt" in (tmp_path / "b" / "log.txt").read_text()


def test_seed_train_call_with_explicit_paths(tiny_scene, tmp_path):
    from s3dgs.train import scale_invariant_depth_loss, train  # noqa: F401  (seed import path)

    res = train(colmap_dir=tiny_scene / "sparse" / "0", images_dir=tiny_scene / "images",
                heatmap_dir=tiny_scene / "heatmaps", confidence_path=tiny_scene / "confidence.json",
                pcd_path=tiny_scene / "points3D.ply", depth_dir=tiny_scene / "depths",
                lambda_depth=0.1, lambda_sem=0.2, num_iterations=20, warmup_iterations=10,
                resolution_scale=1.0, out_dir=tmp_path / "seed", **FAST)
    assert res["depth_used"] and res["semantics_used"]
    assert (tmp_path / "seed" / "point_cloud.ply").exists()
    cfg = json.loads((tmp_path / "seed" / "config.json").read_text())
    assert cfg["train"]["depth"]["weight"] == 0.1 and cfg["train"]["semantics"]["warmup_iterations"] == 10


def test_missing_terms_reported_and_training_goes_on(tiny_scene, tmp_path):
    res = _train(tiny_scene, tmp_path / "r", num_iterations=10, no_depth=True, no_semantics=True)
    assert not res["depth_used"] and not res["semantics_used"]
    assert "depth: switched off" in (tmp_path / "r" / "log.txt").read_text()
    scene2 = tmp_path / "scene2"
    shutil.copytree(tiny_scene, scene2)
    shutil.rmtree(scene2 / "depths")
    (scene2 / "confidence.json").write_text("{}")
    res = _train(scene2, tmp_path / "r2", num_iterations=10)
    log = (tmp_path / "r2" / "log.txt").read_text()
    assert "depth: no frame has a depth prior (no depths/ folder)" in log
    assert "no frame has a heatmap with a confident class" in log
    assert not res["semantics_used"]


def test_nonfinite_loss_skips_then_stops(tiny_scene, tmp_path, monkeypatch):
    import s3dgs.train as T

    monkeypatch.setattr(T, "rgb_loss", lambda pred, gt, lam: (pred * float("nan")).mean())
    with pytest.raises(T.TrainingError, match="non-finite 5 times in a row"):
        _train(tiny_scene, tmp_path / "nan", num_iterations=30, max_nonfinite=5)
    assert "step skipped" in (tmp_path / "nan" / "log.txt").read_text()


def test_nonfinite_loss_counted_on_the_device_stops_at_a_log_window(tiny_scene, tmp_path, monkeypatch):
    """The accelerator path (no host sync per step), run on the CPU: the streak is counted on the
    device, reported and checked once per log window, and --max-nonfinite stops the run."""
    import s3dgs.train as T

    monkeypatch.setattr(T.Trainer, "DEVICE_SIDE_NONFINITE", True)
    monkeypatch.setattr(T, "rgb_loss", lambda pred, gt, lam: (pred * float("nan")).mean())
    with pytest.raises(T.TrainingError, match="non-finite 10 times in a row"):
        _train(tiny_scene, tmp_path / "nan", num_iterations=30, max_nonfinite=5, log_every=10)
    assert "10 step(s) with a non-finite loss in this window" in (tmp_path / "nan" / "log.txt").read_text()


def test_seed_loss_names_the_options_it_ignores():
    """The seed's literal loss takes no options; the trainer names those a user set in vain."""
    from s3dgs.losses import DepthLossConfig

    cfg = DepthLossConfig(loss="seed", multiscale=True, alignment="sfm")
    assert cfg.ignored_by_seed_loss() == ["--depth-alignment sfm", "--depth-multiscale"]
    assert DepthLossConfig(loss="seed").ignored_by_seed_loss() == []
    cfg.loss = "prior"
    assert cfg.ignored_by_seed_loss() == []


def test_stem_pieces_and_mcmc_train_end_to_end(tiny_scene, tmp_path):
    """The trainer feeds the stem pieces what they read (stem masks, depth views) and drives MCMC."""
    res = _train(tiny_scene, tmp_path / "stem", num_iterations=60, warmup_iterations=20, refine_start_iter=10,
                 refine_every=20, reset_every=10_000, grow_grad2d_stem=1e-4, prune_floaters=True,
                 floater_min_views=2)
    ck = torch.load(tmp_path / "stem" / "ckpts" / "ckpt_60.pt", weights_only=False)
    st = ck["strategy_state"]
    assert st["stem_hits"] is not None and "n_on_stem" in st  # stem masks reached the strategy
    assert "n_floaters" in st  # the depth views were built and judged at refinement steps
    assert res["gaussians"] > 0
    cap = 1500
    res = _train(tiny_scene, tmp_path / "mcmc", num_iterations=60, strategy="mcmc", mcmc_cap_max=cap,
                 mcmc_refine_start_iter=10, mcmc_refine_every=20)
    assert res["gaussians"] <= cap
    log = (tmp_path / "mcmc" / "log.txt").read_text()
    assert "mcmc: initial opacity 0.5" in log


def test_floater_pruning_needs_depth_priors(tiny_scene, tmp_path):
    from s3dgs.errors import UsageError

    with pytest.raises(UsageError, match="needs depth priors"):
        _train(tiny_scene, tmp_path / "r", num_iterations=10, prune_floaters=True, no_depth=True)
