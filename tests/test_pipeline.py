"""Resume logic of `s3dgs run`: a finished stage is skipped, a half-written one is redone (with cheap
fake stages; no structure from motion or training)."""

import json
from pathlib import Path

import pytest

from s3dgs import pipeline as P


def _fake_stages(tmp_path: Path, calls: list, fail: set):
    def make(name, out):
        def run():
            calls.append(name)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("partial")
            if name in fail:
                raise RuntimeError(f"{name} interrupted")
            out.write_text("done")
            return {"note": f"{name} ok"}
        return P.Stage(name, run, lambda: [out], {"opt": 1})

    return [make(n, tmp_path / "out" / f"{n}.txt") for n in ("a", "b", "c")]


def test_finished_stages_are_skipped(tmp_path):
    calls: list = []
    stages = _fake_stages(tmp_path, calls, set())
    recs = P.run_stages(stages, tmp_path / "stamps", say=lambda m: None)
    assert calls == ["a", "b", "c"] and [r["status"] for r in recs] == ["ran"] * 3
    stamp = json.loads((tmp_path / "stamps" / "b.json").read_text())
    assert stamp["key"] == {"opt": 1} and stamp["note"] == "b ok"
    calls.clear()
    recs = P.run_stages(stages, tmp_path / "stamps", say=lambda m: None)
    assert calls == [] and [r["status"] for r in recs] == ["done"] * 3


def test_half_written_stage_is_redone(tmp_path):
    calls: list = []
    with pytest.raises(RuntimeError, match="b interrupted"):
        P.run_stages(_fake_stages(tmp_path, calls, {"b"}), tmp_path / "stamps", say=lambda m: None)
    assert calls == ["a", "b"]
    assert (tmp_path / "out" / "b.txt").exists() and not (tmp_path / "stamps" / "b.json").exists()
    calls.clear()
    recs = P.run_stages(_fake_stages(tmp_path, calls, set()), tmp_path / "stamps", say=lambda m: None)
    assert calls == ["b", "c"]
    assert [r["status"] for r in recs] == ["done", "ran", "ran"]
    assert (tmp_path / "out" / "b.txt").read_text() == "done"


def test_missing_output_changed_key_and_redo(tmp_path):
    calls: list = []
    stages = _fake_stages(tmp_path, calls, set())
    P.run_stages(stages, tmp_path / "stamps", say=lambda m: None)
    # an output deleted: that stage and the ones after it are redone
    (tmp_path / "out" / "b.txt").unlink()
    calls.clear()
    P.run_stages(stages, tmp_path / "stamps", say=lambda m: None)
    assert calls == ["b", "c"]
    # changed options redo the stage
    stages[2].key = {"opt": 2}
    calls.clear()
    P.run_stages(stages, tmp_path / "stamps", say=lambda m: None)
    assert calls == ["c"]
    # --redo
    calls.clear()
    P.run_stages(stages, tmp_path / "stamps", redo=("a",), say=lambda m: None)
    assert calls == ["a", "b", "c"]
    with pytest.raises(P.PipelineError, match="no such stage"):
        P.run_stages(stages, tmp_path / "stamps", redo=("nope",), say=lambda m: None)


def test_run_pipeline_resumes_with_fake_rooms(tmp_path, monkeypatch):
    """The real stage list of `s3dgs run`, with each module's function replaced by a fake."""
    calls: list = []
    frames = tmp_path / "frames"
    frames.mkdir()
    kp = tmp_path / "kp"
    kp.mkdir()

    def fake_prepare(cfg, scene):
        calls.append("prepare")
        (scene / "images").mkdir(parents=True, exist_ok=True)
        (scene / "images" / "f0.png").write_bytes(b"x")
        (scene / "sparse" / "0").mkdir(parents=True, exist_ok=True)
        (scene / "sparse" / "0" / "cameras.bin").write_bytes(b"x")
        (scene / "prepare.json").write_text("{}")
        return {"note": "fake"}

    state = {"crash_train": True}

    def fake_train(cfg, scene, run, use_depth, stamp_dir):
        calls.append("train")
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.jsonl").write_text('{"iter": 1, "loss": 1.0}\n')
        if state["crash_train"]:
            raise KeyboardInterrupt
        (run / "point_cloud.ply").write_text("ply")
        (run / "train_summary.json").write_text("{}")
        return {"note": "trained"}

    def fake_heatmaps(cfg, scene):
        calls.append("heatmaps")
        (scene / "heatmaps").mkdir(exist_ok=True)
        (scene / "heatmaps" / "f0.npy").write_bytes(b"x")
        (scene / "confidence.json").write_text("{}")

    def fake_export(cfg, run):
        calls.append("export")
        (run / "classes").mkdir(exist_ok=True)
        (run / "classes" / "counts.json").write_text("{}")

    def fake_report(run, scene):
        calls.append("report")
        assert (run / "pipeline.json").is_file()
        (run / "report.html").write_text("<html></html>")

    monkeypatch.setattr(P, "do_prepare", fake_prepare)
    monkeypatch.setattr(P, "do_heatmaps", fake_heatmaps)
    monkeypatch.setattr(P, "do_train", fake_train)
    def fake_phenotype(cfg, run):
        calls.append("phenotype")
        (run / "phenotypes.json").write_text("{}")

    monkeypatch.setattr(P, "do_export", fake_export)
    monkeypatch.setattr(P, "do_phenotype", fake_phenotype)
    monkeypatch.setattr(P, "do_report", fake_report)
    def fake_eval(cfg, scene, run):
        calls.append("eval")
        (run / "metrics.json").write_text("{}")

    monkeypatch.setattr(P, "do_eval", fake_eval)

    quiet = P.StageOptions(train=P.TrainConfig(progress=False))
    cfg = P.RunConfig(input=frames, out=tmp_path / "out", keypoints=kp, depth_backend="none", stages=quiet)
    with pytest.raises(KeyboardInterrupt):
        P.run_pipeline(cfg, say=lambda m: None)
    assert calls == ["prepare", "heatmaps", "train"]
    calls.clear()
    state["crash_train"] = False
    res = P.run_pipeline(cfg, say=lambda m: None)
    assert calls == ["train", "eval", "export", "phenotype", "report"]  # align and depth skipped with a reason
    status = {r["stage"]: r["status"] for r in res["stages"]}
    assert status == {"prepare": "done", "align": "skipped", "depth": "skipped", "heatmaps": "done",
                      "train": "ran", "eval": "ran", "export": "ran", "phenotype": "ran", "report": "ran"}
    assert res["report"] == tmp_path / "out" / "run" / "report.html"
    calls.clear()
    P.run_pipeline(cfg, say=lambda m: None)
    assert calls == []
    # a changed training option redoes training and everything after it, not the scene
    longer = P.StageOptions(train=P.TrainConfig(num_iterations=10, progress=False))
    P.run_pipeline(P.RunConfig(input=frames, out=tmp_path / "out", keypoints=kp, depth_backend="none",
                               stages=longer), say=lambda m: None)
    assert calls == ["train", "eval", "export", "phenotype", "report"]


def test_a_broken_import_inside_eval_fails_loudly(tmp_path, monkeypatch):
    """No import guard hides a failure: the eval stage raises the ImportError, it is not skipped."""
    import sys

    monkeypatch.setitem(sys.modules, "s3dgs.evaluate", None)  # importing it now raises ImportError
    run = tmp_path / "run"
    run.mkdir()
    cfg = P.RunConfig(input=tmp_path / "in", out=tmp_path, depth_backend="none")
    with pytest.raises(ImportError):
        P.do_eval(cfg, tmp_path / "scene", run)
    stages, _ = P.build_stages(cfg)
    ev = next(s for s in stages if s.name == "eval")
    assert ev.skip_reason is None  # nothing decides to skip evaluation quietly
