"""Resume logic of `s3dgs run`: a finished stage is skipped, a half-written one is redone (with cheap
fake stages; no structure from motion or training)."""

import copy
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


def test_a_changed_upstream_key_redoes_everything_after_it_even_when_skipped(tmp_path):
    """Each stamp's chained key covers the keys of the stages before it: a stage skipped this time
    (no stamp to compare) whose options changed still invalidates the stages after it."""
    calls: list = []
    stages = _fake_stages(tmp_path, calls, set())
    gate = P.Stage("gate", lambda: None, list, {"reference": None}, skip_reason=lambda: "nothing to do")
    chain = [stages[0], gate, stages[1], stages[2]]
    P.run_stages(chain, tmp_path / "stamps", say=lambda m: None)
    assert calls == ["a", "b", "c"]
    calls.clear()
    gate.key = {"reference": "another"}  # still skipped, but what comes after depends on it
    recs = P.run_stages(chain, tmp_path / "stamps", say=lambda m: None)
    assert calls == ["b", "c"] and [r["status"] for r in recs] == ["done", "skipped", "ran", "ran"]
    stamp = json.loads((tmp_path / "stamps" / "c.json").read_text())
    assert stamp["chain"] == P.chain_keys(chain)[3] != P.chain_keys(stages)[2]


def _fake_chain(monkeypatch, calls: list, trainings: list, crash: dict):
    """The real stage list with every module replaced by a fake; the fake training records whether it
    was asked to resume and leaves a checkpoint."""
    import s3dgs.train as T

    def fake_prepare(cfg, scene):
        calls.append("prepare")
        imgs = scene / "images"
        if imgs.exists():
            import shutil

            shutil.rmtree(imgs)
        imgs.mkdir(parents=True)
        for f in sorted(Path(cfg.input).iterdir()):  # the scene's frames are the input's
            (imgs / f.name).write_bytes(f.read_bytes())
        (scene / "sparse" / "0").mkdir(parents=True, exist_ok=True)
        (scene / "sparse" / "0" / "cameras.bin").write_bytes(Path(cfg.input).name.encode())
        (scene / "prepare.json").write_text("{}")

    def fake_run_training(tcfg, inputs, run, *, resume=False, overwrite=False, fixed=frozenset()):
        calls.append("train")
        trainings.append({"resume": resume, "overwrite": overwrite,
                          "frames": sorted(p.name for p in (Path(inputs.scene) / "images").iterdir())})
        (run / "ckpts").mkdir(parents=True, exist_ok=True)
        (run / "ckpts" / "ckpt_5.pt").write_bytes(b"ckpt")
        if crash["train"]:
            raise KeyboardInterrupt
        for name in ("point_cloud.ply", "train_summary.json", "metrics.jsonl"):
            (run / name).write_text("x")
        return {"iterations": 10, "gaussians": 1, "train_time_s": 0.0}

    def writer(name, *files):
        def fake(*args):
            calls.append(name)
            run = next(a for a in args if isinstance(a, Path) and a.name == "run")
            for f in files:
                (run / f).parent.mkdir(parents=True, exist_ok=True)
                (run / f).write_text("x")
        return fake

    monkeypatch.setattr(P, "do_prepare", fake_prepare)
    monkeypatch.setattr(T, "run_training", fake_run_training)
    monkeypatch.setattr(P, "do_eval", writer("eval", "metrics.json"))
    monkeypatch.setattr(P, "do_export", writer("export", "classes/counts.json"))
    monkeypatch.setattr(P, "do_phenotype", writer("phenotype", "phenotypes.json"))
    monkeypatch.setattr(P, "do_report", lambda run, scene: (calls.append("report"),
                                                            (run / "report.html").write_text("x")))


def test_another_input_into_the_same_out_redoes_every_stage_and_trains_anew(tmp_path, monkeypatch):
    calls: list = []
    trainings: list = []
    crash = {"train": True}
    _fake_chain(monkeypatch, calls, trainings, crash)
    a, b = tmp_path / "A", tmp_path / "B"
    for d, names in ((a, ["a0.png", "a1.png"]), (b, ["b0.png", "b1.png", "b2.png"])):
        d.mkdir()
        for n in names:
            (d / n).write_bytes(n.encode())
    out = tmp_path / "out"
    opts = P.StageOptions(train=P.TrainConfig(progress=False))

    def cfg(inp):
        return P.RunConfig(input=inp, out=out, depth_backend="none", stages=copy.deepcopy(opts))

    # A: training interrupted; the same command again continues it
    with pytest.raises(KeyboardInterrupt):
        P.run_pipeline(cfg(a), say=lambda m: None)
    crash["train"] = False
    P.run_pipeline(cfg(a), say=lambda m: None)
    assert trainings[-1] == {"resume": True, "overwrite": False, "frames": ["a0.png", "a1.png"]}
    calls.clear()
    # B into the same OUT: every stage again, and the training starts afresh on B's frames
    res = P.run_pipeline(cfg(b), say=lambda m: None)
    assert calls == ["prepare", "train", "eval", "export", "phenotype", "report"]
    assert {r["stage"]: r["status"] for r in res["stages"]} == {
        "prepare": "ran", "align": "skipped", "depth": "skipped", "heatmaps": "skipped", "train": "ran",
        "eval": "ran", "export": "ran", "phenotype": "ran", "report": "ran"}
    assert trainings[-1] == {"resume": False, "overwrite": True, "frames": ["b0.png", "b1.png", "b2.png"]}
    # B interrupted in training, then A again: the checkpoint left is B's, A's training starts afresh
    crash["train"] = True
    again = cfg(b)
    again.stages.redo = ("train",)
    with pytest.raises(KeyboardInterrupt):
        P.run_pipeline(again, say=lambda m: None)
    assert trainings[-1]["resume"] is False and trainings[-1]["frames"] == ["b0.png", "b1.png", "b2.png"]
    crash["train"] = False
    P.run_pipeline(cfg(a), say=lambda m: None)
    assert trainings[-1] == {"resume": False, "overwrite": True, "frames": ["a0.png", "a1.png"]}


def test_scene_fingerprint_sees_changed_frames(tmp_path):
    scene = tmp_path / "scene"
    (scene / "images").mkdir(parents=True)
    (scene / "images" / "f0.png").write_bytes(b"0")
    fp = P.scene_fingerprint(scene)
    assert P.scene_fingerprint(scene) == fp
    (scene / "images" / "f1.png").write_bytes(b"1")
    assert P.scene_fingerprint(scene) != fp
    fp = P.scene_fingerprint(scene)
    (scene / "confidence.json").write_text("{}")
    assert P.scene_fingerprint(scene) != fp
