"""The rows of a new user's probe (issue 25): each bad input or interruption gets one clear message
(no traceback) or is handled, with the message it expects. Tiny inputs, seconds each."""

import errno
import json
import os
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s3dgs.cli import main
from s3dgs.errors import WorkError
from s3dgs.scene.colmap import SceneError, read_model

FAST = ["--log-every", "10", "--no-progress", "--no-save-renders", "--sh-degree", "1"]


def _train(scene, out, *extra):
    return main(["train", str(scene), "--out", str(out), "--num-iterations", "10", *FAST, *extra])


@pytest.fixture(scope="module")
def run_dir(tiny_scene, tmp_path_factory):
    """A finished 10-iteration run of the tiny scene."""
    out = tmp_path_factory.mktemp("probe") / "run"
    assert _train(tiny_scene, out) == 0
    return out


@pytest.fixture
def scene(tiny_scene, tmp_path):
    """A copy of the tiny scene to damage."""
    return Path(shutil.copytree(tiny_scene, tmp_path / "scene"))


def _text_model(scene: Path, edit_cameras=None, edit_images=None, rigs=True) -> Path:
    """Rewrite the scene's model as text (pycolmap), optionally edited; without rigs/frames files
    (an older COLMAP) when ``rigs`` is False."""
    import pycolmap

    sp = scene / "sparse" / "0"
    rec = pycolmap.Reconstruction(str(sp))
    for f in sp.iterdir():
        f.unlink()
    rec.write_text(str(sp))
    for name, fn in (("cameras.txt", edit_cameras), ("images.txt", edit_images)):
        if fn is not None:
            (sp / name).write_text(fn((sp / name).read_text()))
    if not rigs:
        for name in ("rigs.txt", "frames.txt"):
            (sp / name).unlink(missing_ok=True)
    return scene


def _image_line(text: str, name: str) -> tuple[list[str], int]:
    lines = text.split("\n")
    i = next(k for k, line in enumerate(lines) if line.endswith(" " + name))
    return lines, i


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ------------------------------------------------------------------------------ writes

def test_keep_checkpoints_keeps_the_newest(tiny_scene, tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(tiny_scene), "--out", str(out), "--num-iterations", "30", "--ckpt-every", "5",
                 "--keep-checkpoints", "2", *FAST]) == 0
    assert sorted(p.name for p in (out / "ckpts").iterdir()) == ["ckpt_25.pt", "ckpt_30.pt"]
    from s3dgs.checkpoint import prune_checkpoints

    for it in (1, 2, 3):
        (out / "ckpts" / f"ckpt_{it}.pt").write_bytes(b"x")
    assert prune_checkpoints(out, 0) == []  # 0 keeps all
    assert [p.name for p in prune_checkpoints(out, 1)] == ["ckpt_1.pt", "ckpt_2.pt", "ckpt_3.pt", "ckpt_25.pt"]
    assert main(["train", str(tiny_scene), "--keep-checkpoints", "-1"]) == 2


@pytest.mark.parametrize("exc", [RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter "
                                              "failed writing file data/0: file write failed"),
                                 OSError(errno.ENOSPC, "No space left on device")])
def test_torch_save_on_a_full_disk_is_one_message(tmp_path, monkeypatch, exc):
    from s3dgs.atomic import atomic_torch_save

    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"half")
        raise exc

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(WorkError, match=r"ckpt_7\.pt: could not be written \((the disk is full|torch\.save "
                                        r"could not write it: is the disk full\?)\)"):
        atomic_torch_save({"a": 1}, tmp_path / "ckpts" / "ckpt_7.pt")
    assert list((tmp_path / "ckpts").iterdir()) == []  # no temporary file left


def _commands(scene, run, out):
    return {
        "train": ["train", str(scene), "--out", str(out), "--num-iterations", "2", "--no-progress"],
        "synth": ["synth", str(out), "--preset", "tiny", "--no-progress"],
        "run": ["run", str(scene), str(out), "--depth-backend", "none"],
        "heatmaps": ["heatmaps", str(scene / "keypoints"), str(out)],
        "export": ["export", str(run), "--out", str(out)],
    }


@pytest.mark.parametrize("cmd", ["train", "synth", "run", "heatmaps", "export"])
@pytest.mark.parametrize("child", [False, True])
def test_an_out_that_is_a_file_is_one_message(tiny_scene, run_dir, tmp_path, capsys, cmd, child):
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    out = blocker / "sub" if child else blocker
    assert main(_commands(tiny_scene, run_dir, out)[cmd]) == 2
    err = _error(capsys)
    assert str(out) in err and ("is a file, not a folder" if child else "exists and is not a folder") in err
    assert blocker.read_text() == "mine"


@pytest.mark.parametrize("cmd, name", [("eval", "metrics.json"), ("phenotype", "phenotypes.json")])
def test_eval_and_phenotype_check_their_output_before_working(run_dir, tmp_path, capsys, monkeypatch, cmd, name):
    import s3dgs.evaluate
    import s3dgs.phenotype
    import s3dgs.phenotypes.run

    def never(*a, **k):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(s3dgs.evaluate, "evaluate_run", never)
    monkeypatch.setattr(s3dgs.phenotype, "run_phenotype", never)
    monkeypatch.setattr(s3dgs.phenotypes.run, "run_phenotype", never)  # where phenotype_main looks it up
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (run / name).mkdir()  # a folder where the command writes its file
    assert main([cmd, str(run)]) == 2
    assert f"{run / name} is a folder, where this command writes a file" in _error(capsys)
    (run / name).rmdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == run else real_access(p, mode, **k))
    assert main([cmd, str(run)]) == 1  # a read-only run folder (root writes anyway: os.access says no)
    assert f"RUN {run}: cannot be written: permission denied" in _error(capsys)
    assert not (run / name).exists()


def test_read_only_folder_named_before_any_work(tmp_path, monkeypatch):
    from s3dgs.atomic import check_writable_folder

    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(WorkError, match=r"--out .*/new/run: cannot be written \(.* is where it would be created\): "
                                        r"permission denied\. Make it writable or choose another --out"):
        check_writable_folder(tmp_path / "new" / "run", "--out")


def test_os_errors_past_the_checks_are_one_line(tmp_path, capsys, monkeypatch):
    from s3dgs.scene import synth

    def denied(cfg):
        raise PermissionError(errno.EROFS, "Read-only file system", str(tmp_path / "x.png"))

    monkeypatch.setattr(synth, "make_synthetic_scene", denied)
    assert main(["synth", str(tmp_path / "s")]) == 1
    assert f"{tmp_path / 'x.png'}: Read-only file system" in _error(capsys)


def test_outputs_go_through_atomic(run_dir, tmp_path, monkeypatch):
    """The model PLY, the report and the run's JSON files are written through s3dgs/atomic.py."""
    import s3dgs.atomic
    from s3dgs.gaussians.model import load_ply, save_ply

    written = []
    real = s3dgs.atomic.atomic_write

    def spy(path, fn):
        written.append(Path(path).name)
        return real(path, fn)

    monkeypatch.setattr(s3dgs.atomic, "atomic_write", spy)
    params, classes = load_ply(run_dir / "point_cloud.ply")
    save_ply(tmp_path / "m.ply", params, classes)
    assert written == ["m.ply"] and not list(tmp_path.glob("*.tmp"))
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    from s3dgs.report import write_report

    write_report(run)
    assert "report.html" in written
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "train_summary.json"} <= names and not [n for n in names if n.endswith(".tmp")]


# ------------------------------------------------------------------------------ tracebacks

def test_zero_width_camera(scene, capsys):
    _text_model(scene, edit_cameras=lambda t: t.replace("PINHOLE 160 120", "PINHOLE 0 120"))
    assert _train(scene, scene.parent / "r") == 1
    assert "camera 1 is 0x120 pixels; width and height must be positive" in _error(capsys)


@pytest.mark.parametrize("content, why", [("{bad", "malformed JSON"), ("", "malformed JSON"),
                                          ('{"image": {"width": "wide", "height": 1}, "predictions": []}',
                                           "malformed keypoint file")])
def test_bad_keypoint_json_through_run(tiny_scene, tmp_path, capsys, content, why):
    kp = Path(shutil.copytree(tiny_scene / "keypoints", tmp_path / "kp"))
    (kp / "view_001.json").write_text(content)
    assert main(["run", str(tiny_scene), str(tmp_path / "out"), "--keypoints", str(kp),
                 "--depth-backend", "none"]) == 1
    assert f"{kp / 'view_001.json'}: {why}" in _error(capsys)


# ------------------------------------------------------------------------------ accepted silently

def test_16bit_grey_frames_are_scaled_not_white(scene):
    from s3dgs.scene.dataset import SceneDataset, to_rgb8

    grey = np.full((120, 160), 32896, np.uint16)  # 50 % of 16 bits
    Image.fromarray(grey).save(scene / "images" / "view_001.png")
    assert Image.open(scene / "images" / "view_001.png").mode.startswith("I")
    rgb = np.asarray(to_rgb8(Image.open(scene / "images" / "view_001.png")))
    assert rgb.shape == (120, 160, 3) and (rgb == 128).all()
    ds = SceneDataset.from_dir(scene, split="all", verbose=False)
    img = ds[[f.name for f in ds.frames].index("view_001.png")]["image"]
    assert abs(float(img.mean()) - 128 / 255) < 1e-3


def test_rgba_frames_are_said_once(scene):
    from s3dgs.scene.dataset import SceneDataset

    for name in ("view_001.png", "view_002.png"):
        Image.open(scene / "images" / name).convert("RGBA").save(scene / "images" / name)
    with pytest.warns(UserWarning) as rec:
        SceneDataset.from_dir(scene, split="all")
    msgs = [str(w.message) for w in rec if "alpha" in str(w.message)]
    assert len(msgs) == 1 and "2 frame(s)" in msgs[0] and "view_001.png, view_002.png" in msgs[0]


def test_duplicate_image_names(scene):
    _text_model(scene, edit_images=lambda t: t.replace("view_003.png", "view_002.png"))
    with pytest.raises(SceneError, match=r"images 3 and 4 have the same name 'view_002\.png'"):
        read_model(scene)


@pytest.mark.parametrize("f", ["0 0", "-144 -144"])
def test_focal_length_not_positive(scene, f):
    _text_model(scene, edit_cameras=lambda t: t.replace("144 144 80", f + " 80"))
    with pytest.raises(SceneError, match=r"camera 1 \(of image view_000\.png\) has focal length .*must be positive"):
        read_model(scene)


def test_zero_quaternion_text_and_binary(scene, tmp_path):
    def zero(t):
        lines, i = _image_line(t, "view_000.png")
        p = lines[i].split()
        p[1:5] = ["0", "0", "0", "0"]
        lines[i] = " ".join(p)
        return "\n".join(lines)

    binary = Path(shutil.copytree(scene / "sparse" / "0", tmp_path / "bin"))
    data = bytearray((binary / "images.bin").read_bytes())
    data[12:44] = struct.pack("<4d", 0, 0, 0, 0)  # count (8), first image id (4), then QW QX QY QZ
    (binary / "images.bin").write_bytes(bytes(data))
    with pytest.raises(SceneError, match=r"images\.bin: damaged COLMAP file \(image \d+ has a zero rotation quaternion"):
        read_model(binary)
    _text_model(scene, edit_images=zero)
    with pytest.raises(SceneError, match=r"images\.txt: line \d+: image view_000\.png has a zero rotation quaternion"):
        read_model(scene)


def test_collapsed_point_cloud(scene, capsys):
    from s3dgs.scene.ply import read_points_ply, write_points_ply

    xyz, rgb = read_points_ply(scene / "points3D.ply")
    write_points_ply(scene / "points3D.ply", np.zeros_like(xyz) + 0.25, rgb)
    assert _train(scene, scene.parent / "r") == 1
    assert f"all {len(xyz)} points lie at one spot (0.25, 0.25, 0.25)" in _error(capsys)


def test_confidence_outside_0_1(scene, capsys):
    conf = json.loads((scene / "confidence.json").read_text())
    conf["view_002"]["N"] = 1.7
    (scene / "confidence.json").write_text(json.dumps(conf))
    assert _train(scene, scene.parent / "r") == 1
    assert "entry 'view_002' holds confidences outside [0, 1] (N=1.7)" in _error(capsys)


def test_keypoints_all_off_frame_are_not_confident(tmp_path):
    from s3dgs.scene.heatmaps import make_heatmaps

    kp = tmp_path / "kp"
    kp.mkdir()
    pts = [{"class": c, "x": 500.0 + 10 * k, "y": -300.0, "confidence": 0.95} for k, c in enumerate("UNDP")]
    doc = {"image": {"width": 40, "height": 30},
           "predictions": [{"x": 500, "y": -300, "width": 20, "height": 20, "confidence": 0.9, "keypoints": pts}]}
    (kp / "f0.json").write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match=r"in 1 frame\(s\) every keypoint of a class lies outside the image "
                                         r"\(f0: D, N, P, U\)"):
        conf = make_heatmaps(kp, tmp_path / "scene", progress=False)
    assert conf["f0"] == {"U": 0.0, "N": 0.0, "D": 0.0, "P": 0.0}


def test_resolution_scale_too_small(tiny_scene, tmp_path, capsys):
    assert _train(tiny_scene, tmp_path / "r", "--resolution-scale", "0.01") == 2
    assert ("--resolution-scale 0.01 makes view_001.png (160x120) 2x1 pixels, below the smallest size of 8 "
            "pixels a side; use --resolution-scale 0.0667 or more") in _error(capsys)
    assert not (tmp_path / "r" / "config.json").exists()


def _png16_rgb(path: Path, arr: np.ndarray) -> None:
    """A 16-bit RGB PNG, which PIL can read but not write."""
    h, w, _ = arr.shape
    raw = b"".join(b"\0" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_depth_verify_flags_listed_maps_and_16bit_colour(scene, capsys):
    meta = json.loads((scene / "depths" / "meta.json").read_text())
    meta["images"] = {f"view_{i:03d}": {"size": [160, 120]} for i in range(10)}
    meta["images"]["view_099"] = {"size": [160, 120]}  # listed, its map and its image gone
    (scene / "depths" / "meta.json").write_text(json.dumps(meta))
    rgb16 = (np.random.default_rng(0).random((120, 160, 3)) * 65535).astype(np.uint16)
    _png16_rgb(scene / "depths" / "view_003.png", rgb16)
    assert main(["depth", "verify", str(scene / "depths")]) == 1
    out = capsys.readouterr().out
    assert "view_099.png: missing" in out
    assert "view_003.png: not a 16-bit single-channel PNG (16-bit colour, RGB: three channels, not one)" in out
    assert "8-bit" not in out
    assert _train(scene, scene.parent / "r") == 1
    assert "view_003.png: depth map is not a 16-bit single-channel PNG (16-bit colour" in _error(capsys)


def test_synth_into_a_larger_scene_removes_old_views(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["synth", str(out), "--preset", "tiny", "--no-progress", "--views", "6"]) == 0
    assert main(["synth", str(out), "--preset", "tiny", "--no-progress", "--views", "4"]) == 0
    assert "removed" in capsys.readouterr().out
    for sub, ext in (("images", "png"), ("keypoints", "json"), ("heatmaps", "npy"), ("depths", "png"),
                     ("gt/depth", "npy"), ("gt/masks", "png")):
        assert sorted(p.name for p in (out / sub).glob(f"view_*.{ext}")) == [f"view_{i:03d}.{ext}" for i in range(4)]
    assert sorted(json.loads((out / "confidence.json").read_text())) == [f"view_{i:03d}" for i in range(4)]


# ------------------------------------------------------------------------------ unclear messages

@pytest.mark.parametrize("rigs", [True, False])
def test_missing_camera_is_named(scene, rigs):
    _text_model(scene, edit_images=lambda t: t.replace(" 1 view_003.png", " 2 view_003.png"), rigs=rigs)
    with pytest.raises(SceneError, match=r"images\.txt: line \d+: image view_003\.png uses camera 2, which "
                                         r"cameras\.txt does not hold \(cameras: 1\)"):
        read_model(scene)


def test_truncated_images_txt(scene, tmp_path):
    def cut_lines(t):  # at a line boundary: pycolmap reads the first 5 images without a word
        lines = t.split("\n")
        return "\n".join(lines[:4 + 2 * 5])

    _text_model(scene, edit_images=cut_lines, rigs=False)
    with pytest.raises(SceneError, match=r"images\.txt: the header declares 10 images but the file holds 5: "
                                         r"it is truncated"):
        read_model(scene)
    mid = Path(shutil.copytree(scene, tmp_path / "mid"))
    text = (mid / "sparse" / "0" / "images.txt").read_text()
    (mid / "sparse" / "0" / "images.txt").write_text(text[: len(text) - 40])  # inside an image line
    with pytest.raises(SceneError, match=r"images\.txt: line \d+ has \d fields, not the 10 of IMAGE_ID"):
        read_model(mid)


def test_no_training_frames_names_the_split(scene, capsys):
    assert _train(scene, scene.parent / "r", "--test-every", "1") == 2
    err = _error(capsys)
    assert "no training frames: the model holds 10 image(s) and --test-every 1" in err
    assert "Use --test-every 0 to train on every image" in err

    def one(t):
        lines = [line.replace("Number of images: 10", "Number of images: 1") for line in t.split("\n")]
        _, i = _image_line(t, "view_000.png")
        return "\n".join(lines[:i + 2]) + "\n"

    _text_model(scene, edit_images=one, rigs=False)
    assert _train(scene, scene.parent / "r") == 2
    assert "the model holds 1 image(s) and --test-every 8" in _error(capsys)


def test_confidence_json_unknown_classes_and_a_folder(scene, capsys):
    from s3dgs.scene.dataset import SceneDataset

    conf = json.loads((scene / "confidence.json").read_text())
    conf["view_002"]["Nod"] = 0.9
    (scene / "confidence.json").write_text(json.dumps(conf))
    with pytest.warns(UserWarning, match=r"class name\(s\) 'Nod' \(first in 'view_002'\) are not in the class "
                                         r"table \(U, N, D, P\)"):
        SceneDataset.from_dir(scene, split="all", verbose=False)
    (scene / "confidence.json").unlink()
    (scene / "confidence.json").mkdir()
    assert _train(scene, scene.parent / "r") == 1
    assert f"{scene / 'confidence.json'}: is a folder, where the scene layout has a file" in _error(capsys)


@pytest.mark.parametrize("option", ["--depth-dir", "--heatmap-dir", "--confidence-path", "--images-dir"])
def test_input_path_typos_are_errors(tiny_scene, tmp_path, capsys, option):
    typo = tiny_scene / "dephts"
    assert _train(tiny_scene, tmp_path / "r", option, str(typo)) == 2
    assert f"{option} {typo}: does not exist" in _error(capsys)


@pytest.mark.parametrize("cmd", ["eval", "export", "phenotype"])
def test_interrupted_run_advises_resume(run_dir, tmp_path, capsys, cmd):
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (run / "point_cloud.ply").unlink()
    (run / "train_summary.json").unlink()
    assert main([cmd, str(run)]) == 1
    err = _error(capsys)
    assert f"the training in {run} did not finish (latest checkpoint ckpts/ckpt_10.pt)" in err
    assert f"--out {run} --resume`" in err


def test_moved_scene_names_scene_option(tiny_scene, tmp_path, capsys):
    scene = Path(shutil.copytree(tiny_scene, tmp_path / "scene"))
    assert _train(scene, tmp_path / "run") == 0
    scene.rename(tmp_path / "moved")
    assert main(["eval", str(tmp_path / "run"), "--max-views", "1"]) == 1
    err = _error(capsys)
    assert "the scene recorded in" in err and "(moved or deleted?); pass --scene DIR" in err


def test_warnings_read_as_warning_message(tmp_path, capsys, monkeypatch):
    """Python's "file.py:12: UserWarning: ..." prefix is for developers: cli.main installs a
    formatter that prints "warning: message" only."""
    from s3dgs.scene import synth

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # restored after the test
    monkeypatch.setattr(synth, "make_synthetic_scene", lambda cfg: 0)
    assert main(["synth", str(tmp_path / "unused")]) == 0
    msg = warnings.WarningMessage("something odd", UserWarning, "/x/s3dgs/scene/dataset.py", 12)
    text = warnings._formatwarnmsg(msg)  # what Python's showwarning prints
    assert text == "warning: something odd\n"
