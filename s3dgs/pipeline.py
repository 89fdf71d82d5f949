"""`s3dgs run` (video or frames -> trained, evaluated model with a report) and `s3dgs demo`.

`s3dgs run INPUT OUT` chains the package's modules, each stage one call of that module's own function:

    prepare  INPUT -> OUT/scene (frames, pycolmap SfM, undistortion)     s3dgs.scene.prepare
    depth    OUT/scene/images -> OUT/scene/depths (Depth Anything V2)     s3dgs.depth.generate
    heatmaps --keypoints DIR -> OUT/scene/heatmaps, confidence.json       s3dgs.scene.heatmaps
    train    OUT/scene -> OUT/run                                         s3dgs.train
    eval     OUT/run -> OUT/run/metrics.json                              s3dgs.evaluate
    export   OUT/run/point_cloud.ply -> OUT/run/classes/<C>.ply           s3dgs.export
    report   OUT/run -> OUT/run/report.html                               s3dgs.report

INPUT may also be a ROMI scan (prepare reads its known poses: s3dgs.scene.romi) or a PREPARED SCENE
(a folder with images/ and sparse/0, e.g. what `s3dgs prepare` or `s3dgs synth` writes): no
structure from motion runs, the prepare stage only links its files into OUT/scene (hard links,
copies across file systems; the input is never written to), and its depths/ (with meta.json),
heatmaps/ and confidence.json, when present, are used as they are: the depth and heatmaps stages
are skipped unless --depth-dir, --depth-backend transformers/gradio or --keypoints ask otherwise.

Resuming: when a stage finishes, a stamp OUT/stages/<stage>.json is written atomically, holding the
stage's key (the options it depends on), a chained key (a hash of its own key and those of every
stage before it, so a change upstream, even in a stage skipped this time, invalidates everything
downstream) and its key outputs. A rerun skips a stage whose stamp is there, whose chained key is
unchanged and whose outputs still exist; any other stage is redone (a stage interrupted half-way
has no stamp), and every stage after a redone one is redone too. Training interrupted half-way
continues from its last checkpoint only when its options and the prepared scene (a fingerprint of
its frames, model, priors and heatmaps) are unchanged: another input into the same OUT trains anew.

One command per OUT at a time: `s3dgs run` and `s3dgs demo` hold the locks of OUT and OUT/run for
the whole chain (s3dgs.runlock), so a second command on the same folder stops at once naming the
first.

`s3dgs demo` makes the built-in synthetic plant and runs the same chain on its rendered frames, so
structure from motion runs for real; the synthetic scene's keypoint files stand in for a keypoint
detector, and its simulated depth maps stand in for Depth Anything V2 (labelled as such everywhere).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Literal, Optional

import tyro

from s3dgs.atomic import atomic_write_text
from s3dgs.config import TrainConfig, _arg, load_run_config
from s3dgs.errors import S3dgsError, UsageError
from s3dgs.losses import SemanticConfig
from s3dgs.options import opt
from s3dgs.scene.frames import IMAGE_EXTS  # the one list of frame files

__all__ = ["RunConfig", "DemoConfig", "Stage", "run_stages", "run_pipeline", "run_main", "demo_main",
           "PipelineError", "chain_keys", "scene_fingerprint", "is_prepared_scene"]

log = logging.getLogger("s3dgs")

STAGES = ("prepare", "align", "depth", "heatmaps", "train", "eval", "export", "phenotype", "report")


class PipelineError(S3dgsError, RuntimeError):
    """A stage cannot run; the message names the file and the fix."""


# -----------------------------------------------------------------------------------------------
# configuration
# -----------------------------------------------------------------------------------------------

def _run_train_defaults() -> TrainConfig:
    return TrainConfig(ckpt_every=500)


@dataclass
class StageOptions:
    """Options of the stages that `s3dgs run` and `s3dgs demo` share: training (every option of
    `s3dgs train`, by the same names), export, and which stages to redo."""

    train: TrainConfig = field(default_factory=_run_train_defaults)
    export_threshold: Annotated[float, _arg("class-threshold")] = 0.5
    """Class probability a Gaussian needs to take its class (export and phenotypes, as
    `s3dgs export --class-threshold` and `s3dgs phenotype --class-threshold`)."""
    export_min_opacity: Annotated[float, _arg("min-opacity")] = 0.1
    """Opacity a Gaussian needs to be exported and measured (as `--min-opacity` of `s3dgs export`
    and `s3dgs phenotype`)."""
    phenotype_scale: Annotated[Optional[str], opt("SCALE", "from known poses, else model units",
                                                  name="phenotype-scale", flat=True)] = None
    """Metric scale for the phenotypes when the poses are not metric: as `s3dgs phenotype --scale`
    (a factor in metres per model unit, SIZE=LENGTH of a known object, or SIZE=x1,y1,z1,x2,y2,z2)."""
    redo: Annotated[tuple[str, ...], _arg("redo", metavar="STAGE ...")] = ()
    """Stages to redo even when finished (prepare, align, depth, heatmaps, train, eval, export,
    phenotype, report); the stages after them are redone too."""

    def validate(self) -> None:
        from s3dgs.validate import fraction

        self.train.validate()
        fraction("--class-threshold", self.export_threshold)
        fraction("--min-opacity", self.export_min_opacity)
        unknown = set(self.redo) - set(STAGES)
        if unknown:
            raise UsageError(f"--redo {', '.join(sorted(unknown))}: no such stage; stages are {', '.join(STAGES)}")


@dataclass
class RunConfig:
    """Video or frames -> scene -> depth priors -> heatmaps -> training -> evaluation -> export ->
    report, each stage skipped on a rerun when its outputs are already there."""

    input: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="INPUT")]
    """A video file (mp4, mov, ...), a folder of frames (jpg/png), a ROMI scan, or a prepared scene
    (images/ and sparse/0, e.g. from `s3dgs synth`: no structure from motion; its depths and
    heatmaps are used when present)."""
    out: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT")]
    """Output folder: OUT/scene (the prepared scene), OUT/run (the trained model, metrics, report),
    OUT/stages (one stamp per finished stage)."""
    keypoints: Annotated[Optional[Path], opt("DIR", "none")] = None
    """Folder of Roboflow-style keypoint JSON files, one <stem>.json per frame (named like the
    frames in OUT/scene/images); gives the semantic heatmaps. Without it, no semantics are trained."""
    depth_backend: Literal["auto", "transformers", "gradio", "none"] = "auto"
    """Depth Anything V2 priors. auto: the transformers model when it is on this machine (a local
    folder or the Hugging Face cache), else train without depth; transformers / gradio: that backend
    (may download the model / call the public Space); none: train without depth priors."""
    depth_model: str = "depth-anything/Depth-Anything-V2-Small-hf"
    """transformers model: hub id or local folder."""
    depth_dir: Annotated[Optional[Path], opt("DIR", "none")] = None
    """Use these depth maps (<stem>.png and meta.json, made elsewhere) instead of generating them."""
    reference: Annotated[Optional[Path], opt("DIR", "none")] = None
    """A scene of the same frames with true poses and ground truth (e.g. the synthetic plant): the
    prepared model is aligned to it (similarity of the camera centres) and evaluated against its
    true cameras and ground truth."""
    hotspot_sigma: Annotated[Optional[float], opt("PX", "20 px at 1920 px frame width, scaled, at least 3")] = None
    """Heatmap hotspot sigma in pixels."""
    fps: float = 2.0
    """Frames per second sampled from a video."""
    max_size: int = 1600
    """Frames are scaled down to at most this many pixels on their long side."""
    min_registered: float = 0.5
    """Fraction of frames structure from motion must register."""
    stages: StageOptions = field(default_factory=StageOptions)

    def validate(self) -> None:
        from s3dgs.validate import fraction, positive

        positive("--fps", self.fps)
        positive("--max-size", self.max_size)
        fraction("--min-registered", self.min_registered)
        positive("--hotspot-sigma", self.hotspot_sigma)
        self.stages.validate()


def _demo_stage_defaults() -> StageOptions:
    # 2,000 iterations at the plant's full resolution, SH degree 1 and an 800-iteration warm-up
    # (1,200 semantic iterations): the figures of this schedule are in BENCHMARKS.md ("make demo")
    return StageOptions(train=TrainConfig(num_iterations=2000, sh_degree=1, ckpt_every=250,
                                          semantics=SemanticConfig(warmup_iterations=800)))


@dataclass
class DemoConfig:
    """The whole chain on the built-in synthetic plant; prints where the report is."""

    out: Annotated[Path, tyro.conf.arg(metavar="DIR")] = Path("demo_out")
    """Output folder: OUT/synthetic (the synthetic plant with ground truth), OUT/scene, OUT/run."""
    preset: Literal["default", "thin", "tiny", "closeup"] = "default"
    """Synthetic plant preset (default; tiny for a quick check)."""
    plant_seed: int = 0
    """Seed of the synthetic plant (not of the training: that is --seed)."""
    stages: StageOptions = field(default_factory=_demo_stage_defaults)

    def validate(self) -> None:
        self.stages.validate()


# -----------------------------------------------------------------------------------------------
# resumable stages
# -----------------------------------------------------------------------------------------------

@dataclass
class Stage:
    """One step of the chain.

    `run()` does the work and returns a small JSON-able dict for the stamp (or None). `outputs`
    are the key files/folders the stage leaves; they must exist (folders non-empty) for a finished
    stage to count as valid. `key` holds the options the result depends on: a changed key redoes
    the stage. `skip_reason()`, when given and returning a string, skips the stage without a stamp
    (e.g. no keypoints given), so a later run with what was missing does it."""

    name: str
    run: Callable[[], Optional[dict]]
    outputs: Callable[[], list[Path]] = lambda: []
    key: dict = field(default_factory=dict)
    skip_reason: Optional[Callable[[], Optional[str]]] = None


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return repr(o)


def _normalise_key(key: dict) -> dict:
    return json.loads(json.dumps(key, default=_json_default, sort_keys=True))


def _output_ok(p: Path) -> bool:
    if p.is_dir():
        return any(p.iterdir())
    return p.is_file() and p.stat().st_size > 0


def chain_keys(stages: list[Stage]) -> list[str]:
    """One hash per stage of its name and key chained with those of every stage before it: the
    chained key of a stage changes whenever an option of it or of any earlier stage changes."""
    out, prev = [], ""
    for stage in stages:
        text = json.dumps([prev, stage.name, _normalise_key(stage.key)], sort_keys=True)
        prev = hashlib.sha256(text.encode("utf-8")).hexdigest()
        out.append(prev)
    return out


def stage_status(stage: Stage, stamp_dir: Path, chain: Optional[str] = None) -> tuple[bool, str]:
    """(finished and valid, why not). ``chain``: the stage's chained key (:func:`chain_keys`);
    a stamp with another one was made after other upstream options."""
    stamp = stamp_dir / f"{stage.name}.json"
    if not stamp.is_file():
        return False, "not finished"
    try:
        data = json.loads(stamp.read_text())
    except (OSError, json.JSONDecodeError):
        return False, "stamp unreadable"
    if data.get("key") != _normalise_key(stage.key):
        return False, "options changed"
    if chain is not None and data.get("chain") != chain:
        return False, "an earlier stage's options or input changed"
    missing = [str(p) for p in stage.outputs() if not _output_ok(Path(p))]
    if missing:
        return False, f"output missing: {missing[0]}"
    return True, "done"


def run_stages(stages: list[Stage], stamp_dir: str | Path, *, redo: tuple[str, ...] = (),
               say: Callable[[str], None] = print, records: Optional[list] = None) -> list[dict]:
    """Run `stages` in order, skipping the finished ones; returns one record per stage
    ({"stage", "status": "done"|"skipped"|"ran"|"not run", "seconds", "note"}).

    A stage is redone when it has no valid stamp (its chained key covers the keys of the stages
    before it), when it is named in `redo`, or when a stage before it was redone. Stamps are written atomically after a stage returns; the stamps of the
    stages after a redone stage are removed before it runs, so an interruption leaves no stale ones.
    Exceptions from a stage propagate (its stamp is not written). Records are appended to
    `records` (when given) as each stage ends."""
    stamp_dir = Path(stamp_dir)
    stamp_dir.mkdir(parents=True, exist_ok=True)
    if records is None:
        records = []
    dirty = False
    unknown = set(redo) - {s.name for s in stages}
    if unknown:
        raise PipelineError(f"--redo {', '.join(sorted(unknown))}: no such stage; stages are "
                            f"{', '.join(s.name for s in stages)}")
    chains = chain_keys(stages)
    for i, stage in enumerate(stages):
        ok, why = stage_status(stage, stamp_dir, chains[i])
        if stage.name in redo:
            ok, why = False, "asked to redo"
        elif dirty and ok:
            ok, why = False, "an earlier stage was redone"
        if ok:
            prev = json.loads((stamp_dir / f"{stage.name}.json").read_text())
            say(f"[{stage.name}] already done ({prev.get('seconds', 0):.1f} s when it ran); skipped")
            records.append({"stage": stage.name, "status": "done", "seconds": 0.0,
                            "note": prev.get("note", "")})
            continue
        if stage.skip_reason is not None:
            reason = stage.skip_reason()
            if reason:
                say(f"[{stage.name}] skipped: {reason}")
                (stamp_dir / f"{stage.name}.json").unlink(missing_ok=True)
                records.append({"stage": stage.name, "status": "skipped", "seconds": 0.0, "note": reason})
                continue
        for later in stages[i:]:
            (stamp_dir / f"{later.name}.json").unlink(missing_ok=True)
        dirty = True
        say(f"[{stage.name}] running ({why})")
        t0 = time.perf_counter()
        info = stage.run() or {}
        seconds = time.perf_counter() - t0
        note = str(info.pop("note", "")) if isinstance(info, dict) else ""
        stamp = {"stage": stage.name, "key": _normalise_key(stage.key), "chain": chains[i],
                 "seconds": round(seconds, 3),
                 "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "note": note,
                 "outputs": [str(p) for p in stage.outputs()], "info": info}
        atomic_write_text(stamp_dir / f"{stage.name}.json",
                           json.dumps(stamp, indent=2, default=_json_default))
        say(f"[{stage.name}] finished in {_fmt_s(seconds)}" + (f": {note}" if note else ""))
        records.append({"stage": stage.name, "status": "ran", "seconds": seconds, "note": note})
    return records


def _fmt_s(s: float) -> str:
    return f"{s:.1f} s" if s < 90 else f"{int(s // 60)} min {s % 60:02.0f} s"


# -----------------------------------------------------------------------------------------------
# stage implementations (module-level so tests can replace them)
# -----------------------------------------------------------------------------------------------

def _scene_images(scene: Path) -> list[Path]:
    d = scene / "images"
    return sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS) if d.is_dir() else []


def is_prepared_scene(path: Path) -> bool:
    """True for a folder holding a prepared scene: images/ and sparse/0 (a COLMAP model), and not
    a ROMI scan (which prepare reads itself)."""
    from s3dgs.scene.romi import is_romi_scan

    path = Path(path)
    return (path / "images").is_dir() and (path / "sparse" / "0").is_dir() and not is_romi_scan(path)


def prepared_scene_parts(path: Path) -> dict:
    """What a prepared scene brings beyond its frames and model: {"depth": depths/meta.json is
    there, "heatmaps": heatmaps/ and confidence.json are there}."""
    path = Path(path)
    return {"depth": (path / "depths" / "meta.json").is_file(),
            "heatmaps": _output_ok(path / "heatmaps") and (path / "confidence.json").is_file()}


def link_prepared_scene(src: Path, scene: Path) -> dict:
    """Make ``scene`` (OUT/scene) a copy of the prepared scene ``src`` by hard links (instant, no
    space), copies where links fail (another file system). Later stages replace files atomically
    (a new file, never a write through the link), so ``src`` is never changed."""
    import os

    src = Path(src)
    if scene.exists():
        shutil.rmtree(scene)

    def link_or_copy(a, b):
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, scene, copy_function=link_or_copy, symlinks=False,
                    ignore=shutil.ignore_patterns(".lock", ".lock.json"))
    n = len(_scene_images(scene))
    if n == 0:
        raise PipelineError(f"{src / 'images'}: a prepared scene needs its frames (jpg/png) there")
    parts = prepared_scene_parts(scene)
    extra = [k for k, v in (("depth priors", parts["depth"]), ("heatmaps", parts["heatmaps"])) if v]
    return {"note": f"prepared scene {src}: {n} frames" + (f" with {' and '.join(extra)}" if extra else "")
                    + " (no structure from motion)", "frames": n, **parts}


def do_prepare(cfg: RunConfig, scene: Path) -> dict:
    from s3dgs.scene.prepare import prepare_scene

    if is_prepared_scene(cfg.input):
        return link_prepared_scene(cfg.input, scene)

    summary = prepare_scene(cfg.input, scene, fps=cfg.fps, max_size=cfg.max_size,
                            min_registered=cfg.min_registered, overwrite=True, progress=cfg.stages.train.progress)
    print(summary.text())
    if summary.source == "romi scan":
        return {"note": f"ROMI scan: {summary.frames_used} frames with known poses, {summary.masks} class "
                        f"masks, {summary.points} carved points", "registered": summary.registered,
                "frames": summary.frames_used}
    return {"note": f"{summary.registered}/{summary.frames_used} frames registered, "
                    f"{summary.mean_reprojection_error:.2f} px reprojection error",
            "registered": summary.registered, "frames": summary.frames_used}


def depth_plan(cfg: RunConfig) -> tuple[Optional[str], str]:
    """(backend to use or None, a sentence saying why)."""
    if cfg.depth_dir is not None:
        return "copy", f"depth maps from {cfg.depth_dir}"
    if cfg.depth_backend == "none":
        return None, "--depth-backend none: training without depth priors"
    if cfg.depth_backend in ("transformers", "gradio"):
        return cfg.depth_backend, f"Depth Anything V2 through {cfg.depth_backend}"
    try:
        from s3dgs.depth.backends import model_availability
    except ImportError as exc:  # pragma: no cover - s3dgs.depth is part of the package
        return None, f"no depth backend ({exc}); training without depth priors"
    ok, why = model_availability(cfg.depth_model)
    if ok and "download" not in why:
        return "transformers", f"Depth Anything V2 ({cfg.depth_model}, {why})"
    return None, (f"no depth backend available here (Depth Anything V2 model {cfg.depth_model!r}: "
                  f"{why if not ok else 'not on this machine'}); training without depth priors. "
                  "Get the model once with `hf download depth-anything/Depth-Anything-V2-Small-hf`, or "
                  "pass --depth-backend gradio to use the public Space")


def do_depth(cfg: RunConfig, scene: Path, backend: str) -> dict:
    out = scene / "depths"
    if backend == "copy":
        return copy_depths(cfg.depth_dir, scene)
    from s3dgs.depth.generate import generate_depth

    summary = generate_depth(scene / "images", out, backend=backend, model=cfg.depth_model,
                             progress=cfg.stages.train.progress)
    if not summary.ok:
        raise PipelineError(f"depth: {len(summary.failed)} image(s) failed "
                            f"({', '.join(list(summary.failed)[:3])}); rerun to retry them, or pass "
                            "--depth-backend none")
    return {"note": f"{summary.generated} generated, {summary.skipped} kept ({summary.backend})"}


def copy_depths(src: Path, scene: Path) -> dict:
    """Copy <stem>.png maps for the scene's frames (and meta.json) into scene/depths."""
    src = Path(src)
    if not src.is_dir():
        raise PipelineError(f"{src}: depth folder does not exist")
    out = scene / "depths"
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for img in _scene_images(scene):
        p = src / f"{img.stem}.png"
        if p.is_file():
            shutil.copy2(p, out / p.name)
            n += 1
    if n == 0:
        raise PipelineError(f"{src}: no <stem>.png depth map matches the frames in {scene / 'images'}")
    meta = {}
    if (src / "meta.json").is_file():
        meta = json.loads((src / "meta.json").read_text())
    meta.setdefault("kind", "disparity")
    meta["copied_from"] = str(src)
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=2, default=_json_default))
    label = "SIMULATED Depth Anything V2 stand-in" if meta.get("simulated") else "copied depth maps"
    return {"note": f"{n} maps ({label})", "simulated": bool(meta.get("simulated"))}


def rescale_keypoints(src: Path, scene: Path) -> Path:
    """Copy the keypoint files of the scene's frames into scene/keypoints, with coordinates scaled
    to the scene's frame size when the file's "image" size differs (frames scaled down by prepare).
    Returns scene/keypoints."""
    from PIL import Image

    from s3dgs.scene.heatmaps import KeypointFileError

    src = Path(src)
    if not src.is_dir():
        raise PipelineError(f"{src}: keypoint folder does not exist (expected one <stem>.json per frame)")
    out = scene / "keypoints"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    n = 0
    for img in _scene_images(scene):
        f = src / f"{img.stem}.json"
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # the message of `s3dgs heatmaps`
            raise KeypointFileError(f"{f}: malformed JSON ({exc}); fix or delete this keypoint file") from exc
        with Image.open(img) as im:
            w, h = im.size
        try:
            if isinstance(data, dict) and isinstance(data.get("image"), dict) and \
                    "width" in data["image"] and "height" in data["image"]:
                sx, sy = w / float(data["image"]["width"]), h / float(data["image"]["height"])
                if abs(sx - 1) > 1e-9 or abs(sy - 1) > 1e-9:
                    for p in data.get("predictions", []):
                        for k, s in (("x", sx), ("y", sy), ("width", sx), ("height", sy)):
                            if k in p:
                                p[k] = float(p[k]) * s
                        for kp in p.get("keypoints", []):
                            kp["x"], kp["y"] = float(kp["x"]) * sx, float(kp["y"]) * sy
        except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError) as exc:
            raise KeypointFileError(f"{f}: malformed keypoint file ({type(exc).__name__}: {exc}); its \"image\" "
                                    "size and \"predictions\" must be numbers as Roboflow writes them; fix or "
                                    "delete this keypoint file") from exc
        if isinstance(data, dict):
            data["image"] = {"width": w, "height": h}
        atomic_write_text(out / f.name, json.dumps(data))
        n += 1
    if n == 0:
        raise PipelineError(f"{src}: no <stem>.json matches the frames in {scene / 'images'} (keypoint "
                            "files must be named like the frames)")
    return out


def do_heatmaps(cfg: RunConfig, scene: Path) -> dict:
    from PIL import Image

    from s3dgs.scene.heatmaps import make_heatmaps

    kp = rescale_keypoints(cfg.keypoints, scene)
    sigma = cfg.hotspot_sigma
    if sigma is None:
        with Image.open(_scene_images(scene)[0]) as im:
            sigma = max(3.0, 20.0 * im.width / 1920.0)
    conf = make_heatmaps(kp, scene, progress=cfg.stages.train.progress, hotspot_sigma=sigma)
    return {"note": f"{len(conf)} heatmaps"}


def train_config(cfg: RunConfig, use_depth: bool) -> TrainConfig:
    """The training configuration of the run's train stage: ``cfg.stages.train``, without the depth
    term when no priors were made. Schedules are scaled to the run by the trainer (s3dgs.config)."""
    t = copy.deepcopy(cfg.stages.train)
    t.data.no_depth = t.data.no_depth or not use_depth
    return t


SCENE_PARTS = ("images", "sparse/0", "depths", "heatmaps", "confidence.json", "points3D.ply")
"""What training reads from a prepared scene (its fingerprint covers these)."""


def scene_fingerprint(scene: Path) -> str:
    """A hash of the names, sizes and modification times of every file training reads from
    ``scene`` (:data:`SCENE_PARTS`): a re-prepared scene (other frames, another model, new priors
    or heatmaps) has another fingerprint. Reads no file's content, so it is instant."""
    scene = Path(scene)
    rows = []
    for part in SCENE_PARTS:
        p = scene / part
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p] if p.is_file() else []
        for q in files:
            st = q.stat()
            rows.append([q.relative_to(scene).as_posix(), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(rows).encode("utf-8")).hexdigest()


def do_train(cfg: RunConfig, scene: Path, run: Path, use_depth: bool, stamp_dir: Path) -> dict:
    """Train, or continue an interrupted training of the same configuration on the same prepared
    scene (its options and :func:`scene_fingerprint` are recorded in OUT/stages/train.started.json
    when a training starts, and removed when it finishes; anything else starts afresh, replacing
    the old run)."""
    from s3dgs.checkpoint import latest_checkpoint
    from s3dgs.train import SceneInputs, run_training

    tcfg = train_config(cfg, use_depth)
    key = _normalise_key(dataclasses.asdict(tcfg))
    fingerprint = scene_fingerprint(scene)
    started = stamp_dir / "train.started.json"
    try:
        prev = json.loads(started.read_text()) if started.is_file() else {}
    except (OSError, json.JSONDecodeError):
        prev = {}
    same = prev.get("key") == key and prev.get("scene") == fingerprint
    resume = same and latest_checkpoint(run) is not None
    if resume:
        print(f"[train] continuing the interrupted training from {latest_checkpoint(run).name}")
    else:
        if prev and latest_checkpoint(run) is not None:
            print("[train] the scene or the training options changed since the interrupted training: "
                  "starting again")
        atomic_write_text(started, json.dumps({"key": key, "scene": fingerprint}, default=_json_default))
    summary = run_training(tcfg, SceneInputs(scene=scene), run, resume=resume, overwrite=not resume)
    # finished: a later run of this stage (--redo train, changed inputs) trains anew, it does not
    # "continue" from the final checkpoint
    started.unlink(missing_ok=True)
    return {"note": f"{summary['iterations']} iterations, {summary['gaussians']} Gaussians, "
                    f"{summary['train_time_s']:.0f} s",
            "gaussians": summary["gaussians"], "train_time_s": summary["train_time_s"]}


def do_align(cfg: RunConfig, scene: Path) -> dict:
    from s3dgs.scene.align import align_to_reference

    a = align_to_reference(scene, cfg.reference)
    return {"note": f"{a['matched_cameras']} cameras aligned to {cfg.reference} (scale {a['scale']:.4g}, "
                    f"centre error median {a['centre_error_median_pct_of_spread']:.2f} % / max "
                    f"{a['centre_error_max_pct_of_spread']:.2f} % of the camera spread)", **a}


def do_eval(cfg: RunConfig, scene: Path, run: Path) -> dict:
    from s3dgs.evaluate import evaluate_run

    res = evaluate_run(run, cfg.reference if cfg.reference else scene)
    keys = [k for k, v in (res or {}).items() if isinstance(v, dict)]
    return {"note": "metrics: " + ", ".join(keys) if keys else "metrics written"}


def do_export(cfg: RunConfig, run: Path) -> dict:
    from s3dgs.export import export_classes

    activation = load_run_config(run)["train"].semantics.activation
    counts = export_classes(run / "point_cloud.ply", run / "classes", threshold=cfg.stages.export_threshold,
                            min_opacity=cfg.stages.export_min_opacity, activation=activation)
    return {"note": ", ".join(f"{c} {n}" for c, n in counts.items()) + " points", "counts": counts}


def do_phenotype(cfg: RunConfig, run: Path) -> dict:
    """Plant height, nodes, internodes, stem diameters, peduncles -> RUN/phenotypes.{json,csv,png}."""
    from s3dgs.phenotype import run_phenotype

    res = run_phenotype(run, scale=cfg.stages.phenotype_scale, class_threshold=cfg.stages.export_threshold,
                        min_opacity=cfg.stages.export_min_opacity)
    return {"note": res["summary"]}


def do_report(run: Path, scene: Path) -> dict:
    from s3dgs.report import write_report

    path = write_report(run, scene)
    return {"note": str(path)}


# -----------------------------------------------------------------------------------------------
# the chain
# -----------------------------------------------------------------------------------------------

def build_stages(cfg: RunConfig) -> tuple[list[Stage], dict]:
    """The stages of `s3dgs run` for `cfg`, and a dict shared with them (scene, run, stamps)."""
    out = Path(cfg.out)
    scene, run, stamps = out / "scene", out / "run", out / "stages"
    ctx = {"scene": scene, "run": run, "stamps": stamps, "depth_used": False}
    backend, depth_why = depth_plan(cfg)
    inp = Path(cfg.input)
    prepared = is_prepared_scene(inp)
    parts = prepared_scene_parts(inp) if prepared else {"depth": False, "heatmaps": False}
    # a prepared scene's own priors stand unless the user named other ones (--depth-dir, an explicit
    # backend) or none (--depth-backend none)
    scene_depth = parts["depth"] and cfg.depth_dir is None and cfg.depth_backend == "auto"
    scene_heatmaps = parts["heatmaps"] and cfg.keypoints is None
    if scene_depth:
        backend, depth_why = None, f"the depth priors of the prepared scene {inp}"
    ctx["depth_why"] = depth_why

    def input_key():
        try:
            st = inp.stat()
            key = {"path": str(inp.resolve()), "mtime": int(st.st_mtime), "size": st.st_size}
        except OSError:
            return {"path": str(inp)}
        if prepared:  # the folder's mtime misses files changed inside it: fingerprint them (stat only)
            key["scene"] = scene_fingerprint(inp)
        return key

    prepare = Stage("prepare", lambda: do_prepare(cfg, scene),
                    lambda: [scene / "images", scene / "sparse" / "0"] + ([] if prepared else [scene / "prepare.json"]),
                    {"input": input_key(), "fps": cfg.fps, "max_size": cfg.max_size,
                     "min_registered": cfg.min_registered})

    align = Stage("align", lambda: do_align(cfg, scene), lambda: [scene / "alignment.json"],
                  {"reference": str(cfg.reference) if cfg.reference else None},
                  skip_reason=lambda: None if cfg.reference else "no --reference scene: nothing to align to")

    def depth_run():
        info = do_depth(cfg, scene, backend)
        return info

    depth_stage = Stage("depth", depth_run, lambda: [scene / "depths" / "meta.json"],
                        {"backend": backend, "model": cfg.depth_model,
                         "depth_dir": str(cfg.depth_dir) if cfg.depth_dir else None},
                        skip_reason=lambda: None if backend else depth_why)
    if scene_depth:
        depth_stage.skip_reason = lambda: "the prepared scene has its depth priors (depths/meta.json)"
    heat = Stage("heatmaps", lambda: do_heatmaps(cfg, scene),
                 lambda: [scene / "heatmaps", scene / "confidence.json"],
                 {"keypoints": str(cfg.keypoints) if cfg.keypoints else None,
                  "hotspot_sigma": cfg.hotspot_sigma},
                 skip_reason=lambda: None if cfg.keypoints else
                 "the prepared scene has its heatmaps (heatmaps/, confidence.json)" if scene_heatmaps else
                 "no --keypoints given: training without semantic heatmaps")
    use_depth = backend is not None or scene_depth
    train = Stage("train", lambda: do_train(cfg, scene, run, use_depth, stamps),
                  lambda: [run / "point_cloud.ply", run / "train_summary.json", run / "metrics.jsonl"],
                  {"train": dataclasses.asdict(train_config(cfg, use_depth)),
                   "keypoints": bool(cfg.keypoints) or scene_heatmaps})
    ev = Stage("eval", lambda: do_eval(cfg, scene, run), lambda: [run / "metrics.json"],
               {"reference": str(cfg.reference) if cfg.reference else None})
    export = Stage("export", lambda: do_export(cfg, run), lambda: [run / "classes" / "counts.json"],
                   {"threshold": cfg.stages.export_threshold, "min_opacity": cfg.stages.export_min_opacity})
    pheno = Stage("phenotype", lambda: do_phenotype(cfg, run), lambda: [run / "phenotypes.json"],
                  {"scale": cfg.stages.phenotype_scale, "class_threshold": cfg.stages.export_threshold,
                   "min_opacity": cfg.stages.export_min_opacity})
    report = Stage("report", lambda: do_report(run, scene), lambda: [run / "report.html"], {})
    return [prepare, align, depth_stage, heat, train, ev, export, pheno, report], ctx


def _print_summary(records: list[dict], total: float, say=print) -> None:
    say("")
    say("stage       status      time        note")
    for r in records:
        t = _fmt_s(r["seconds"]) if r["status"] == "ran" else "-"
        say(f"{r['stage']:<11} {r['status']:<11} {t:<11} {r['note']}")
    say(f"total       {_fmt_s(total)}")


def run_pipeline(cfg: RunConfig, say: Callable[[str], None] = print) -> dict:
    """Run (or continue) the whole chain for `cfg`. Returns {"scene", "run", "report", "stages"}.

    Raises the modules' errors (PrepareError, SceneError, TrainingError, ...) and PipelineError."""
    from s3dgs.atomic import check_writable_folder
    from s3dgs.runlock import run_lock

    check_writable_folder(cfg.out, "OUT")
    for sub in ("scene", "run", "stages"):  # a file where the chain makes a folder
        if (Path(cfg.out) / sub).exists() and not (Path(cfg.out) / sub).is_dir():
            raise UsageError(f"OUT {cfg.out}: {Path(cfg.out) / sub} is a file where s3dgs run keeps a folder; "
                             "move it away or choose another OUT")
    # one command per OUT at a time: the chain writes OUT/scene, OUT/stages and the run OUT/run
    with run_lock(cfg.out, "s3dgs run"), run_lock(Path(cfg.out) / "run", "s3dgs run"):
        return _run_pipeline_locked(cfg, say)


def _run_pipeline_locked(cfg: RunConfig, say: Callable[[str], None]) -> dict:
    t0 = time.perf_counter()
    stages, ctx = build_stages(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    say(f"s3dgs run: {cfg.input} -> {out}")
    say(f"depth priors: {ctx['depth_why']}")
    records: list[dict] = []

    # the report shows the stage times: the record of the stages before it goes into RUN first
    report_stage = stages[-1]
    report_run = report_stage.run

    def report_with_record():
        _write_pipeline_record(ctx["run"], records, time.perf_counter() - t0, ctx)
        return report_run()

    report_stage.run = report_with_record
    run_stages(stages, ctx["stamps"], redo=tuple(cfg.stages.redo), say=say, records=records)
    total = time.perf_counter() - t0
    _print_summary(records, total, say)
    if ctx["run"].is_dir():
        _write_pipeline_record(ctx["run"], records, total, ctx)
    report = ctx["run"] / "report.html"
    return {"scene": ctx["scene"], "run": ctx["run"], "report": report if report.is_file() else None,
            "stages": records}


def _write_pipeline_record(run: Path, records: list[dict], total: float, ctx: dict) -> None:
    run.mkdir(parents=True, exist_ok=True)
    data = {"stages": records, "total_s": round(total, 3), "depth": ctx.get("depth_why", "")}
    atomic_write_text(run / "pipeline.json", json.dumps(data, indent=2, default=_json_default))


def run_main(cfg: RunConfig) -> int:
    """CLI: `s3dgs run INPUT OUT`. Errors reach s3dgs.cli.main (one line, exit status 1 or 2)."""
    from s3dgs.runlock import RunFolderBusy

    cfg.validate()
    from s3dgs.config import check_strategy_options

    check_strategy_options(cfg.stages.train, getattr(cfg, "cli_given", frozenset()))
    try:
        res = run_pipeline(cfg)
    except RunFolderBusy:
        raise  # nothing was started: the one line says what holds OUT
    except S3dgsError:
        print("s3dgs run: the finished stages are kept; rerun the same command to continue", file=sys.stderr)
        raise
    except KeyboardInterrupt:
        print("\ns3dgs run: interrupted; rerun the same command to continue where it stopped")
        return 130
    if res["report"]:
        print(f"\nreport: {res['report'].resolve()}")
    return 0


# -----------------------------------------------------------------------------------------------
# demo
# -----------------------------------------------------------------------------------------------

def make_demo_scene(cfg: DemoConfig, say=print) -> Path:
    """The synthetic plant in OUT/synthetic (made once; reused when complete)."""
    synth = Path(cfg.out) / "synthetic"
    stamp = Path(cfg.out) / "stages" / "synthetic.json"
    from s3dgs.scene.synth import DEMO_OVERRIDES, demo_synth_config, make_synthetic_scene

    key = {"preset": cfg.preset, "seed": cfg.plant_seed, **DEMO_OVERRIDES.get(cfg.preset, {})}
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key and \
            _output_ok(synth / "images") and _output_ok(synth / "keypoints") and \
            (synth / "depths" / "meta.json").is_file():
        say(f"[synthetic] already made in {synth}; skipped")
        return synth
    say(f"[synthetic] rendering the synthetic plant ({cfg.preset} preset) into {synth}")
    t0 = time.perf_counter()
    if synth.exists():
        shutil.rmtree(synth)
    make_synthetic_scene(demo_synth_config(synth, cfg.preset, cfg.plant_seed))
    dt = time.perf_counter() - t0
    atomic_write_text(stamp, json.dumps({"key": key, "seconds": round(dt, 3)}))
    say(f"[synthetic] finished in {_fmt_s(dt)}")
    return synth


def demo_run_config(cfg: DemoConfig, synth: Path) -> RunConfig:
    """The `s3dgs run` configuration of the demo: the synthetic plant's frames, keypoints and
    simulated priors, aligned to and evaluated against its ground truth."""
    return RunConfig(input=synth / "images", out=Path(cfg.out), keypoints=synth / "keypoints",
                     depth_dir=synth / "depths", depth_backend="none", reference=synth, min_registered=0.5,
                     stages=copy.deepcopy(cfg.stages))


def demo_main(cfg: DemoConfig) -> int:
    """CLI: `s3dgs demo` (`make demo`)."""
    from s3dgs.runlock import run_lock

    cfg.validate()
    t0 = time.perf_counter()
    try:
        with run_lock(cfg.out, "s3dgs demo"):  # one command per OUT at a time, the scene made included
            synth = make_demo_scene(cfg)
            print("note: the depth priors are a SIMULATED Depth Anything V2 stand-in made from the synthetic "
                  "scene's true depth; the keypoint files stand in for a keypoint detector.")
            rc = demo_run_config(cfg, synth)
            rc.cli_given = getattr(cfg, "cli_given", frozenset())  # options typed by the user are kept
            res = run_pipeline(rc)
    except KeyboardInterrupt:
        print("\ns3dgs demo: interrupted; rerun to continue where it stopped")
        return 130
    print(f"\ndemo finished in {_fmt_s(time.perf_counter() - t0)}")
    if res["report"] is None:
        raise PipelineError("no report was written; see the stage lines above")
    print(f"report: {Path(res['report']).resolve()}")
    return 0
