"""The `s3dgs` command line: every subcommand is listed and its --help is generated."""

import subprocess
import sys

import pytest

from s3dgs.cli import ALIASES, COMMANDS, main


def test_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name} " in out
    assert "depth verify" in out


@pytest.mark.parametrize("argv", [[n, "--help"] for n in COMMANDS] + [[a, b, "--help"] for a, b in ALIASES])
def test_subcommand_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: s3dgs " + " ".join(argv[:-1]) in out and "--help" in out


def test_unknown_command(capsys):
    assert main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_console_script_train_on_tiny_scene(tiny_scene, tmp_path):
    out = subprocess.run([sys.executable, "-m", "s3dgs.cli", "train", str(tiny_scene), "--out", str(tmp_path / "r"),
                          "--num-iterations", "20", "--log-every", "10", "--no-progress", "--sh-degree", "0"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "Iter    20 | Loss:" in out.stdout + out.stderr
    assert (tmp_path / "r" / "point_cloud.ply").exists()
    bad = subprocess.run([sys.executable, "-m", "s3dgs.cli", "train", str(tmp_path / "nope"), "--out",
                          str(tmp_path / "r2")], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and "scene folder does not exist" in bad.stdout + bad.stderr
