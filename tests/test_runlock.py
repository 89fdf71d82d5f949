"""One command per run folder at a time (s3dgs/runlock.py): a second command on a held folder stops at
once naming the holder; a killed holder's lock is free; the same process may take its lock again."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from s3dgs.cli import main
from s3dgs.runlock import HOLDER_NAME, RunFolderBusy, held_folders, lock_holder, run_lock

ROOT = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from s3dgs.runlock import run_lock
with run_lock(sys.argv[1], "s3dgs train"):
    print("ready", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder():
    """Start another process that holds the lock of a folder; yields a function folder -> Popen."""
    procs = []

    def start(folder: Path) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True,
                             env=env, cwd=str(ROOT))
        procs.append(p)
        assert p.stdout.readline().strip() == "ready"
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_second_train_on_a_held_folder_stops_naming_the_first(tiny_scene, tmp_path, holder, capsys):
    run = tmp_path / "run"
    first = holder(run)
    before = sorted(p.name for p in run.iterdir())
    assert main(["train", str(tiny_scene), "--out", str(run), "--num-iterations", "5", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{run}: in use by s3dgs train (PID {first.pid} on " in err
    assert "Wait for that command to finish" in err and "its process ends" in err
    assert sorted(p.name for p in run.iterdir()) == before  # nothing written: no config.json, no log
    assert first.poll() is None  # the first goes on


def test_eval_phenotype_and_run_on_a_held_folder_stop(tmp_path, holder, capsys):
    run = tmp_path / "run"
    first = holder(run)
    for argv in (["eval", str(run)], ["phenotype", str(run)]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert f"PID {first.pid}" in err and "Traceback" not in err, argv
    # `s3dgs run` on OUT holds OUT and OUT/run: another command's OUT/run stops it before any stage
    frames = tmp_path / "frames"
    frames.mkdir()
    out = tmp_path / "out"
    second = holder(out / "run")
    assert main(["run", str(frames), str(out), "--depth-backend", "none", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{out / 'run'}: in use by s3dgs train (PID {second.pid}" in err and len(err.strip().splitlines()) == 1
    assert not (out / "stages").exists() and not (out / "scene").exists()


def test_a_killed_holder_does_not_block(tmp_path, holder):
    run = tmp_path / "run"
    first = holder(run)
    with pytest.raises(RunFolderBusy), run_lock(run, "s3dgs eval"):
        pass
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert lock_holder(run)["pid"] == first.pid  # its sidecar is left behind ...
    with run_lock(run, "s3dgs eval"):  # ... but the OS released its lock
        assert lock_holder(run)["pid"] == os.getpid() and lock_holder(run)["what"] == "s3dgs eval"
    assert not (run / HOLDER_NAME).exists()


def test_same_process_reenters_and_releases(tmp_path):
    out = tmp_path / "out"
    with run_lock(out, "s3dgs run"):
        with run_lock(out / "run", "s3dgs run"), run_lock(out / "run", "s3dgs train"):
            assert {p.name for p in held_folders()} >= {"out", "run"}
            assert lock_holder(out / "run")["what"] == "s3dgs run"  # the outer holder stays named
        assert out.resolve() in held_folders() and (out / "run").resolve() not in held_folders()
        assert json.loads((out / HOLDER_NAME).read_text())["pid"] == os.getpid()
    assert held_folders() == [] and not (out / HOLDER_NAME).exists()


def test_a_missing_folder_and_a_file(tmp_path):
    with run_lock(tmp_path / "absent", "s3dgs eval", create=False):
        pass
    assert not (tmp_path / "absent").exists()  # not made for a command that only writes into a run
    (tmp_path / "file").write_text("x")
    from s3dgs.errors import UsageError

    with pytest.raises(UsageError, match="exists and is not a folder"), run_lock(tmp_path / "file", "s3dgs train"):
        pass
