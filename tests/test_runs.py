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
