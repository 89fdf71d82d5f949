"""Run folders never mix, resume checks what it continues, a damaged checkpoint is not fatal, a full
disk is one line: the training side of the reliability issue."""

import errno
import json
import shutil

import pytest
import torch

from s3dgs.cli import main

FAST = ["--log-every", "10", "--no-progress", "--no-save-renders", "--sh-degree", "1",
        "--refine-start-iter", "10", "--refine-every", "10"]


def _train(scene, out, *extra):
    return main(["train", str(scene), "--out", str(out), "--num-iterations", "30", "--ckpt-every", "10",
                 *FAST, *extra])


@pytest.fixture(scope="module")
def finished_run(tiny_scene, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "done"
    assert _train(tiny_scene, out) == 0
    return out


def _snapshot(run):
    return {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def test_train_refuses_a_folder_holding_another_run(tiny_scene, finished_run, tmp_path, capsys):
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    before = _snapshot(run)
    assert _train(tiny_scene, run) == 2
    err = capsys.readouterr().err
    assert "holds another run" in err and "--resume" in err and "--overwrite" in err
    assert _snapshot(run) == before  # nothing written, nothing lost


def test_overwrite_replaces_only_run_files(tiny_scene, finished_run, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    (run / "metrics.json").write_text("{}")  # a stale result of the old run
    (run / "notes.txt").write_text("mine")  # not a run file
    assert _train(tiny_scene, run, "--overwrite", "--seed", "3") == 0
    assert not (run / "metrics.json").exists()
    assert (run / "notes.txt").read_text() == "mine"
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 3
    assert (run / "log.txt").read_text().count("done: 30 iterations") == 1  # not appended to the old log


def test_resume_with_other_model_options_names_them(tiny_scene, finished_run, tmp_path, capsys):
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    before = _snapshot(run)
    assert _train(tiny_scene, run, "--resume", "--sh-degree", "2", "--no-semantics") == 2
    err = capsys.readouterr().err
    assert "--sh-degree: 1 in the checkpoint, 2 now" in err and "--no-semantics" in err
    other = tmp_path / "scene2"
    shutil.copytree(tiny_scene, other)
    assert main(["train", str(other), "--out", str(run), "--num-iterations", "30", *FAST, "--resume"]) == 2
    assert "scene:" in capsys.readouterr().err
    assert _snapshot(run) == before


def test_resume_after_truncated_checkpoint_equals_uninterrupted(tiny_scene, finished_run, tmp_path, capsys):
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    for p in ("point_cloud.ply", "ckpts/ckpt_30.pt"):
        (run / p).unlink()
    # the latest remaining checkpoint is truncated, the one before it is good
    good = (run / "ckpts" / "ckpt_20.pt").read_bytes()
    (run / "ckpts" / "ckpt_20.pt").write_bytes(good[: len(good) // 3])
    assert _train(tiny_scene, run, "--resume") == 0
    out = capsys.readouterr().out
    assert "ckpt_20.pt cannot be read" in out and "ckpt_20.pt.corrupt" in out
    assert "resume: continuing from ckpt_10.pt at iteration 10" in out
    assert (run / "ckpts" / "ckpt_20.pt.corrupt").exists()
    a = torch.load(finished_run / "ckpts" / "ckpt_30.pt", weights_only=False)["params"]
    b = torch.load(run / "ckpts" / "ckpt_30.pt", weights_only=False)["params"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)


def test_full_disk_while_checkpointing(tiny_scene, tmp_path, monkeypatch, capsys):
    import s3dgs.atomic as A

    real_save = torch.save
    calls = {"n": 0}

    def save(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] >= 2:  # the first checkpoint fits, the second finds the disk full
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(A.torch if hasattr(A, "torch") else torch, "save", save)
    run = tmp_path / "r"
    assert _train(tiny_scene, run) == 1
    err = capsys.readouterr().err
    assert "ckpt_20.pt: could not be written (the disk is full)" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (run / "ckpts").iterdir()) == ["ckpt_10.pt"]  # no temporary file left
    monkeypatch.setattr(torch, "save", real_save)
    torch.load(run / "ckpts" / "ckpt_10.pt", weights_only=False)  # the last good one is intact


def test_resume_and_overwrite_together(tiny_scene, tmp_path, capsys):
    assert _train(tiny_scene, tmp_path / "r", "--resume", "--overwrite") == 2
    assert "contradict" in capsys.readouterr().err


def _drop_frame(scene, tmp_path):
    """A copy of ``scene`` whose COLMAP model lacks its second frame (its image file stays)."""
    import numpy as np

    from s3dgs.scene.colmap import read_model, write_model

    other = tmp_path / "scene_fewer"
    shutil.copytree(scene, other)
    m = read_model(other / "sparse" / "0")
    views = [v for i, v in enumerate(m.views) if i != 1]
    shutil.rmtree(other / "sparse" / "0")
    write_model(other / "sparse" / "0", [v.name for v in views], np.stack([v.K for v in views]),
                np.stack([v.viewmat for v in views]), views[0].width, views[0].height, m.xyz, m.rgb)
    return other, m.views[1].name


def test_resume_on_changed_frames_is_refused(tiny_scene, finished_run, tmp_path, capsys):
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    (run / "ckpts" / "ckpt_30.pt").unlink()
    fewer, gone = _drop_frame(tiny_scene, tmp_path)
    # same options, same scene path: only the frames differ
    cfg = json.loads((run / "config.json").read_text())
    cfg["scene"] = str(fewer)
    cfg["resolved_paths"] = {k: (v.replace(str(tiny_scene), str(fewer)) if v else v)
                             for k, v in cfg["resolved_paths"].items()}
    for p in run.glob("ckpts/ckpt_*.pt"):
        ck = torch.load(p, weights_only=False)
        ck["config"] = cfg
        torch.save(ck, p)
    before = _snapshot(run)
    assert _train(fewer, run, "--resume") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "the scene's training frames changed" in err and f"removed: {gone}" in err
    assert "--overwrite to start again" in err
    assert _snapshot(run) == before


def test_check_frames_names_added_and_reordered(tmp_path):
    from s3dgs.checkpoint import check_frames
    from s3dgs.errors import UsageError

    ck = tmp_path / "ckpt_10.pt"
    check_frames(["a", "b"], ["a", "b"], ck)
    check_frames(None, ["a", "b"], ck, n_perm=2)  # an older checkpoint without names: the count agrees
    with pytest.raises(UsageError, match=r"2 frames in the checkpoint, 3 in the scene now; added: c\)"):
        check_frames(["a", "b"], ["a", "b", "c"], ck)
    with pytest.raises(UsageError, match="the same names in another order"):
        check_frames(["a", "b"], ["b", "a"], ck)
    with pytest.raises(UsageError, match="trained on 3 frames, the scene has 2"):
        check_frames(None, ["a", "b"], ck, n_perm=3)


def test_resume_shorter_than_the_checkpoint_is_refused(tiny_scene, finished_run, tmp_path, capsys):
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    before = _snapshot(run)
    assert main(["train", str(tiny_scene), "--out", str(run), "--num-iterations", "20", "--ckpt-every", "10",
                 *FAST, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--num-iterations 20: below the iteration of" in err and "ckpt_30.pt (30)" in err
    assert "Traceback" not in err
    assert _snapshot(run) == before  # config and summary still say 30


def test_interrupted_then_resumed_logs_each_row_once(tiny_scene, tmp_path, monkeypatch, capsys):
    from s3dgs.train import Trainer

    real_step = Trainer.train_step

    def step(self, i):
        if i == 25:  # Ctrl-C between the checkpoint of 20 and the end
            raise KeyboardInterrupt
        return real_step(self, i)

    monkeypatch.setattr(Trainer, "train_step", step)
    run = tmp_path / "r"
    assert _train(tiny_scene, run, "--log-every", "5") == 130
    rows = [json.loads(x)["iter"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == [5, 10, 15, 20, 25]  # 25 was logged after the checkpoint of 20
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iter": 2')  # and a half-written line, as a kill leaves
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert _train(tiny_scene, run, "--log-every", "5", "--resume") == 0
    rows = [json.loads(x)["iter"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == [5, 10, 15, 20, 25, 30]


def test_leftover_temporary_checkpoint_is_removed_at_the_next_start(tiny_scene, finished_run, tmp_path):
    run = tmp_path / "r"
    shutil.copytree(finished_run, run)
    (run / "ckpts" / "ckpt_30.pt").unlink()
    (run / "point_cloud.ply").unlink()
    tmp = run / "ckpts" / ".ckpt_30.pt.k3j9x_ab.tmp"  # what atomic.py names it; the write was killed
    tmp.write_bytes(b"half a checkpoint")
    assert _train(tiny_scene, run, "--resume") == 0
    assert not tmp.exists()
    assert sorted(p.name for p in (run / "ckpts").iterdir()) == ["ckpt_10.pt", "ckpt_20.pt", "ckpt_30.pt"]
