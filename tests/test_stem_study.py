"""The stem study (benchmarks/stem_study.py, issue 12): its verdict, score, target and combination
rules on constructed numbers, and the whole study end to end in its tiny form (files, every row,
finished runs reused, a combination of methods trained as its own row)."""

import json

import pytest
from conftest import load_benchmark

study = load_benchmark("stem_study")


def test_verdict_on_constructed_ranges():
    v = study.verdict
    # higher is better
    assert v([0.8, 0.85, 0.9], [0.5, 0.6, 0.7]) == "shown"
    assert v([0.5, 0.6, 0.7], [0.8, 0.85, 0.9]) == "worse"
    assert v([0.6, 0.75, 0.9], [0.5, 0.6, 0.7]) == "not shown"  # overlapping ranges
    assert v([0.7, 0.8], [0.5, 0.7]) == "not shown"  # touching ranges overlap
    # lower is better (floaters, breaks)
    assert v([1, 0, 0], [2, 3, 2], -1) == "shown"
    assert v([2, 3, 2], [1, 0, 0], -1) == "worse"
    assert v([0.30, 0.41], [0.40, 0.45], -1) == "not shown"
    # missing figures give no verdict either way
    assert v([None, None], [0.1, 0.2]) == "not shown" and v([], []) == "not shown"
    assert v([0.9, None], [0.1, 0.2]) == "shown"  # a missing seed is left out, not taken as 0


def test_promises_combine_their_parts():
    c = study.combine_verdicts
    assert c(["shown", "shown"]) == "shown"
    assert c(["shown", "not shown"]) == "not shown"  # coverage up but breaks not down: not shown
    assert c(["not shown", "worse"]) == "worse"
    assert c(["shown", "worse"]) == "not shown"  # mixed
    summary = {
        "rgb": {"stem_cover": _sp([0.5, 0.55, 0.6]), "stem_breaks": _sp([4, 5, 6]), "floaters": _sp([0.4, 0.42, 0.44]),
                "cover_peduncle": _sp([0.2, 0.3, 0.4]), "psnr": _sp([30.0, 30.1, 30.2])},
        "prior": {"stem_cover": _sp([0.7, 0.75, 0.8]), "stem_breaks": _sp([1, 2, 2]), "floaters": _sp([0.3, 0.35, 0.43]),
                  "cover_peduncle": _sp([0.1, 0.12, 0.15]), "psnr": _sp([30.3, 30.4, 30.5])},
    }
    got = {p["promise"]: p["verdict"] for p in study.verdicts(summary, {"rgb": None, "prior": None})["promises"]}
    assert got == {"fewer broken stems": "shown", "fewer floaters": "not shown",
                   "thin structures kept (peduncle coverage)": "worse", "RGB quality not lower (PSNR)": "shown"}


def _sp(v):
    from study_runs import spread

    return spread(v)


def test_score_and_targets():
    fig = {"stem_cover": 0.8, "floaters": 0.2, "stem_breaks": 3, "psnr": 29.0}
    assert study.score(fig, 30.0) == pytest.approx(0.8 - 0.2 - 0.03 - 0.05)
    assert study.score(fig, 28.0) == pytest.approx(0.8 - 0.2 - 0.03)  # no bonus above rgb
    assert study.score({**fig, "floaters": None}, 30.0) is None
    summary = {
        "rgb": {"stem_cover": _sp([0.5]), "stem_breaks": _sp([4]), "floaters": _sp([0.4]), "miou": _sp([0.3]),
                "psnr": _sp([30.0])},
        "best_combo": {"stem_cover": _sp([0.92, 0.95]), "stem_breaks": _sp([1, 1]), "floaters": _sp([0.15, 0.2]),
                       "miou": _sp([0.55, 0.6]), "psnr": _sp([29.9, 30.2])},
        "prior": {"stem_cover": _sp([0.95]), "stem_breaks": _sp([2]), "floaters": _sp([0.1]), "miou": _sp([0.7]),
                  "psnr": _sp([29.0])},
    }
    t = {row: [x["status"] for x in ts] for row, ts in study.targets(summary).items()}
    assert t["best_combo"] == ["met", "met", "not met", "met"]  # floaters 0.2 <= 0.4 / 2, mIoU 0.575 < 0.6
    assert t["prior"] == ["not met", "met", "met", "not met"]  # two breaks; PSNR below rgb
    assert study.targets(summary)["best_combo"][2]["figure"] == "0.575"
    assert t["rgb"] == ["not met", "reference", "not met", "reference"]


def test_combination_of_methods():
    own = {m: dict(o) for m, (o, _) in study.METHODS.items()}
    own["+mcmc"]["mcmc_cap_max"] = 5000
    bases = {m: "prior" for m in study.METHODS}
    gains = {"+stem_one_sided": 0.02, "+stem_aware": -0.01, "+stem_densify": 0.01, "+prune_floaters": 0.03,
             "+mcmc": 0.05}
    cfg, used, left = study.combine_methods(gains, bases, "prior", own)
    # +mcmc beats +stem_densify (the default strategy's), and pruning goes through MCMC's own switch
    assert used == ["+stem_one_sided", "+prune_floaters", "+mcmc"] and "+stem_densify" in left
    assert cfg == {"depth_thin": "off", "depth_stem_one_sided": True, "strategy": "mcmc", "mcmc_cap_max": 5000,
                   "mcmc_prune_floaters": True}
    # on an rgb base the depth methods ran on prior: they cannot join
    bases = {m: ("prior" if needs else "rgb") for m, (_, needs) in study.METHODS.items()}
    cfg, used, left = study.combine_methods({**gains, "+mcmc": -0.1}, bases, "rgb", own)
    assert used == ["+stem_densify"] and set(left) == {"+stem_one_sided", "+prune_floaters"}
    assert cfg == {"lambda_depth": 0.0, "no_depth": True, "grow_grad2d_stem": 2e-4}
    cfg, used, _ = study.combine_methods({m: 0.0 for m in gains}, bases, "rgb", own)
    assert used == [] and cfg == study.BASE_ROWS["rgb"]


def test_class_coverage_per_class_and_part(tiny_scene, tmp_path):
    """Coverage by any Gaussian, per class and per part: opaque Gaussians on every true centreline
    but the pedicels' cover all of them and little of the pedicels."""
    from test_evaluate import _fake_run, _stem_gaussians

    from s3dgs.evaluate import geometry_tolerances
    from s3dgs.scene.groundtruth import load_ground_truth

    gt = load_ground_truth(tiny_scene)
    pedicels = {i for i, s in enumerate(gt.stems) if s["part"] == "pedicel"}
    assert pedicels and len(pedicels) < sum(s["class"] == "P" for s in gt.stems)
    run = _fake_run(tmp_path, tiny_scene, _stem_gaussians(gt, drop=lambda i, t: i in pedicels))
    c = study.class_coverage(run, gt, {**geometry_tolerances(gt), "opaque_threshold": 0.5})
    # a pedicel's start lies within reach of the peduncle's Gaussians it springs from
    assert c["cover_part_pedicel"] < 0.5 and c["cover_part_peduncle"] > 0.99 and c["cover_part_petiole"] > 0.99
    for k in ("U", "N", "D"):
        assert c[f"cover_{k}"] > 0.99 and c[f"breaks_{k}"] == 0
    assert 0.05 < c["cover_P"] < 0.95 and 0.05 < c["cover_peduncle"] < 0.95
    assert c["cover_peduncle"] == pytest.approx(c["cover_P"])  # class P is exactly the fruit stalks


def test_stem_study_tiny_end_to_end(tiny_scene, tmp_path, monkeypatch, capsys):
    out, scenes = tmp_path / "study", tmp_path / "scenes"
    scenes.mkdir()
    (scenes / "tiny").symlink_to(tiny_scene)  # the session's tiny plant, not made again
    args = ["--tiny", "--iterations", "6", "--threads", "1", "--out", str(out), "--scenes", str(scenes)]

    # a method row before its bases are finished: refused, naming what to run first
    assert study.main([*args, "--only", "+stem_aware"]) == 2
    assert "--only rgb,prior first" in capsys.readouterr().err

    assert study.main(args) == 0
    r = json.loads((out / "stem_study.json").read_text())
    p = r["presets"]["tiny"]
    assert [row["name"] for row in p["rows"]] == list(study.ROWS)
    assert p["iterations"] == 6 and p["seeds"] == [0, 1] and p["best_base"] in ("rgb", "prior")
    assert r["machine"]["cores"] >= 1 and r["date"] and "--tiny" in r["command"]
    for row in p["rows"]:
        assert [run["seed"] for run in row["runs"]] == [0, 1]
        for run in row["runs"]:
            assert run["psnr"] > 5 and run["floaters"] is not None and run["stem_cover"] is not None
            assert run["wall_s"] > 0 and run["score"] is not None and run["cover_P"] is not None
            assert run["cover_peduncle"] is not None and run["cover_part_petiole"] is not None
        s = row["summary"]["psnr"]
        assert s["min"] <= s["mean"] <= s["max"] and s["n"] == 2
    rows = {row["name"]: row for row in p["rows"]}
    assert rows["rgb"]["config"] == {"lambda_depth": 0.0, "no_depth": True} and rows["prior"]["config"] == {"depth_thin": "off"}
    cfg = json.loads((out / "runs/tiny/+stem_densify/seed1/config.json").read_text())["train"]
    assert cfg["seed"] == 1 and cfg["num_iterations"] == 6 and cfg["densify"]["grow_grad2d_stem"] == 2e-4
    base = rows["+mcmc"]["base"]
    assert rows["+mcmc"]["config"]["mcmc_cap_max"] == round(rows[base]["summary"]["gaussians"]["mean"])
    assert len(p["verdicts"]["methods"]) == len(study.METHODS) and len(p["verdicts"]["promises"]) == 8
    assert all(v["verdict"] in ("shown", "not shown", "worse") for v in p["verdicts"]["methods"])
    assert set(p["targets"]) == set(study.ROWS)
    md = (out / "stem_study.md").read_text()
    for name in study.ROWS:
        assert f"| {name} | 2 |" in md
    assert "## Preset `tiny`" in md and "The issue's targets" in md and "vs rgb" in md
    hm = p["heatmaps"]  # the supervision's own mIoU on the runs' held-out views, beside the target
    assert hm["available"] and hm["n_views"] == p["held_out_views"] and 0 <= hm["miou"] <= 1
    assert f"reach mIoU {hm['miou']:.3f}" in md
    assert (out / "plots" / "tiny.png").stat().st_size > 0

    # one seed of a method row in a process of its own, the base and the +mcmc budget chosen over every
    # seed (--base-seeds): the same options as the full study's, so the finished runs are reused
    assert study.main([*args, "--seeds", "1", "--base-seeds", "0,1", "--only", "+stem_densify,+mcmc"]) == 0
    p1 = json.loads((out / "stem_study.json").read_text())["presets"]["tiny"]
    assert p1["best_base"] == p["best_base"] and p1["base_seeds"] == [0, 1]
    assert all(run["reused"] for row in p1["rows"] for run in row["runs"])
    assert study.main([*args, "--seeds", "1", "--base-seeds", "0,1,5", "--only", "+stem_densify"]) == 2
    assert "--base-seeds 0,1,5" in capsys.readouterr().err

    # a second invocation reuses every finished run; a combination of two methods (forced here) is a
    # row of its own, trained with both options
    ply = out / "runs/tiny/rgb/seed0/point_cloud.ply"
    mtime = ply.stat().st_mtime_ns
    forced = {"depth_stem_aware": True, "depth_stem_one_sided": True}
    monkeypatch.setattr(study, "combine_methods",
                        lambda gains, bases, best, own: (forced, ["+stem_one_sided", "+stem_aware"], {}))
    assert study.main(args) == 0
    p = json.loads((out / "stem_study.json").read_text())["presets"]["tiny"]
    rows = {row["name"]: row for row in p["rows"]}
    assert ply.stat().st_mtime_ns == mtime
    assert all(run["reused"] for n, row in rows.items() if n != "best_combo" for run in row["runs"])
    combo = rows["best_combo"]
    assert combo["same_as"] is None and combo["config"] == forced
    assert not any(run["reused"] for run in combo["runs"])
    assert json.loads((out / "runs/tiny/best_combo/seed0/config.json").read_text())["train"]["depth"]["stem_one_sided"]

    # a finished run is never taken for a run of other options
    assert study.main([*args, "--iterations", "7"]) == 2
    assert "a finished run of other options" in capsys.readouterr().err


def test_mcmc_row_says_when_its_budget_was_not_reached():
    def fake(counts, cap):
        runs = [{"gaussians": g} for g in counts]
        row = {"config": {"strategy": "mcmc", "mcmc_cap_max": cap}, "note": "on rgb",
               "summary": {"gaussians": study.spread([r["gaussians"] for r in runs])}, "runs": runs}
        return type("S", (), {"rows": {"+mcmc": row}})()

    short = fake([19000, 19332], 342000)
    study.PresetStudy._budget_note(short)
    assert "budget was not reached: at most 19,332 Gaussians" in short.rows["+mcmc"]["note"]
    full = fake([342000, 342000], 342000)
    study.PresetStudy._budget_note(full)
    assert full.rows["+mcmc"]["note"] == "on rgb"
    study.PresetStudy._budget_note(type("S", (), {"rows": {}})())  # no MCMC row: nothing to say
