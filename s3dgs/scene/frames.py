"""Frames for structure from motion: from a video (sampled at a chosen rate, sharpest frame per
window) or from a folder of images, with blurred frames dropped.

Sharpness is the variance of the Laplacian of the grey image (the usual blur measure): a video is
decoded at `candidates` frames per kept frame, and in each window of `1 / fps` seconds only the
sharpest frame is kept; then any kept frame much blurrier than the others
(`sharpness < blur_threshold * median`) is dropped as well.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from s3dgs.scene.colmap import SceneError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
"""The frame files every command reads (compared in lower case): the one list of them."""
IMAGE_SUFFIXES = IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS)
"""The same, in both cases: the suffixes to try when a frame is looked up by its stem."""
VIDEO_EXTS = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".3gp")


class PrepareError(SceneError):
    """`s3dgs prepare` cannot go on; the message says what was wrong and what to do."""


@dataclass
class FrameSet:
    """Frames ready for structure from motion.

    image_dir: folder holding the frames; names: [N] file names in it (sorted, blurred ones left out).
    """

    image_dir: Path
    names: list[str]
    source: str  # "video" or "folder"
    total: int  # frames looked at (decoded video frames, or images in the folder)
    dropped_blurred: list[str] = field(default_factory=list)
    sharpness: dict[str, float] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # (width, height) when all frames share it
    video_fps: float = 0.0
    video_duration: float = 0.0


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image `rgb [H, W, 3]` uint8 (higher = sharper)."""
    g = np.asarray(rgb, np.float32)
    if g.ndim == 3:
        g = g[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = (g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]) - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def sharpest_per_window(times: np.ndarray, scores: np.ndarray, fps: float) -> list[int]:
    """Indices of the sharpest frame in each window of `1 / fps` seconds.

    Args:
        times: [N] frame times in seconds (increasing).
        scores: [N] sharpness.
        fps: kept frames per second.
    """
    windows = np.floor(np.asarray(times) * fps + 1e-6).astype(np.int64)
    keep = []
    for w in np.unique(windows):
        idx = np.nonzero(windows == w)[0]
        keep.append(int(idx[np.argmax(np.asarray(scores)[idx])]))
    return keep


def blurred(scores: dict[str, float], threshold: float) -> list[str]:
    """Names whose sharpness is under `threshold * median` of all (none when threshold <= 0)."""
    if threshold <= 0 or len(scores) < 3:
        return []
    med = float(np.median(list(scores.values())))
    return sorted(n for n, s in scores.items() if s < threshold * med)


def _resize(img, max_size: int):
    from PIL import Image

    if max_size > 0 and max(img.size) > max_size:
        s = max_size / max(img.size)
        img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))),
                         Image.Resampling.LANCZOS)
    return img


def video_frames(
    video: Path,
    out_dir: Path,
    *,
    fps: float = 2.0,
    candidates: int = 3,
    max_frames: int = 300,
    max_size: int = 1600,
    blur_threshold: float = 0.2,
    progress: bool = True,
) -> FrameSet:
    """Extract frames from `video` into `out_dir` (JPEG, `frame_00000.jpg`, ...).

    Decodes at `fps * candidates` frames per second (the ffmpeg binary of imageio-ffmpeg), keeps
    the sharpest frame of each `1 / fps` window, and lowers `fps` so that at most `max_frames`
    are kept. Frames are scaled so that the longer side is at most `max_size` (0: keep).
    """
    import imageio_ffmpeg
    from PIL import Image
    from tqdm import tqdm

    if fps <= 0:
        raise PrepareError(f"--fps must be positive (got {fps})")
    try:
        probe = imageio_ffmpeg.read_frames(str(video))
        meta = next(probe)
        probe.close()
    except Exception as exc:
        raise PrepareError(
            f"{video}: could not be read as a video ({_first_line(exc)}). Pass a video file "
            "ffmpeg can decode (mp4, mov, ...) or a folder of frames.") from exc
    native = float(meta.get("fps") or 0.0)
    duration = float(meta.get("duration") or 0.0)
    if duration > 0 and max_frames > 0 and duration * fps > max_frames:
        new_fps = max_frames / duration
        print(f"prepare: {duration:.1f} s of video at {fps:g} fps would give more than {max_frames} "
              f"frames; using {new_fps:.3g} fps (raise --max-frames to keep more).")
        fps = new_fps
    rate = fps * max(1, candidates)
    filters = []
    if native <= 0 or rate < native:
        filters.append(f"fps={rate:.6g}")
    else:
        rate = native
    if max_size > 0:
        filters.append(f"scale=w='min(iw,{max_size})':h='min(ih,{max_size})'"
                       ":force_original_aspect_ratio=decrease:force_divisible_by=2")
    out_params = ["-vf", ",".join(filters)] if filters else None

    out_dir.mkdir(parents=True, exist_ok=True)
    expected = int(duration * rate) if duration > 0 else None
    bar = tqdm(total=expected, desc="frames", unit="frame", disable=not progress)
    kept: dict[int, tuple[float, str]] = {}  # window -> (score, name)
    n = 0
    width = height = 0
    log = logging.getLogger("imageio_ffmpeg")  # it warns when we scale on purpose
    log_level = log.level
    log.setLevel(logging.ERROR)
    gen = None
    try:
        gen = imageio_ffmpeg.read_frames(str(video), output_params=out_params)
        meta = next(gen)
        width, height = meta["size"]
        for raw in gen:
            frame = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
            t = n / rate
            w = int(np.floor(t * fps + 1e-6))
            if max_frames > 0 and w >= max_frames:
                break  # the duration was unknown or wrong
            s = sharpness(frame)
            if w not in kept or s > kept[w][0]:
                name = f"frame_{w:05d}.jpg"
                Image.fromarray(frame).save(out_dir / name, quality=95)
                kept[w] = (s, name)
            n += 1
            bar.update(1)
    except PrepareError:
        raise
    except Exception as exc:
        raise PrepareError(f"{video}: decoding failed after {n} frames ({_first_line(exc)}). "
                           "Re-encode the video (e.g. to H.264 mp4) or pass a folder of frames.") from exc
    finally:
        bar.close()
        log.setLevel(log_level)
        with contextlib.suppress(Exception):
            gen.close()
    if not kept:
        raise PrepareError(f"{video}: the video has no frames that ffmpeg could decode. "
                           "Pass another video or a folder of frames.")
    scores = {name: s for s, name in kept.values()}
    drop = blurred(scores, blur_threshold)
    for name in drop:
        (out_dir / name).unlink(missing_ok=True)
    names = sorted(n_ for n_ in scores if n_ not in drop)
    return FrameSet(image_dir=out_dir, names=names, source="video", total=n, dropped_blurred=drop,
                    sharpness=scores, size=(int(width), int(height)), video_fps=native,
                    video_duration=duration)


def write_video(path: str | Path, frames: list[np.ndarray], fps: float, quality: int = 9) -> Path:
    """Write `frames` (each [H, W, 3] uint8, all one size) as an H.264 mp4 at `fps` with the ffmpeg
    binary that imageio-ffmpeg ships: a video of rendered or photographed views for `prepare`.
    Sizes that are not multiples of 16 are padded by imageio-ffmpeg (it says so)."""
    import imageio_ffmpeg

    if not frames:
        raise PrepareError(f"{path}: no frames to write")
    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, quality=quality, macro_block_size=16)
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()
    return Path(path)


def folder_frames(
    folder: Path,
    work_dir: Path,
    *,
    max_size: int = 1600,
    blur_threshold: float = 0.2,
    progress: bool = True,
) -> FrameSet:
    """Use the images in `folder/images` when that holds images (a scene folder), else in `folder`,
    sorted by name.

    Images are used in place unless one is larger than `max_size`; then all are scaled into
    `work_dir`. Frames under `blur_threshold * median` sharpness are left out.
    """
    from PIL import Image
    from tqdm import tqdm

    src = folder
    files = _list_images(src)
    if _list_images(folder / "images"):  # a scene folder (e.g. the synthetic plant): its frames
        src = folder / "images"
        files = _list_images(src)
    if not files:
        raise PrepareError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTS)}). Pass a "
                           "folder of frames or a video file.")
    sizes: dict[str, tuple[int, int]] = {}
    scores: dict[str, float] = {}
    resize_needed = False
    for f in tqdm(files, desc="frames", unit="frame", disable=not progress):
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                sizes[f.name] = im.size
                if max_size > 0 and max(im.size) > max_size:
                    resize_needed = True
                    im = _resize(im, max_size)
                scores[f.name] = sharpness(np.asarray(im))
        except Exception as exc:
            raise PrepareError(f"{f}: unreadable image ({_first_line(exc)}). Remove or replace it.") from exc
    drop = blurred(scores, blur_threshold)
    names = [f.name for f in files if f.name not in drop]
    image_dir = src
    if resize_needed:
        image_dir = work_dir
        image_dir.mkdir(parents=True, exist_ok=True)
        for name in tqdm(names, desc="resize", unit="frame", disable=not progress):
            with Image.open(src / name) as im:
                im = _resize(im.convert("RGB"), max_size)
                kw = {"quality": 95} if name.lower().endswith((".jpg", ".jpeg")) else {}
                im.save(image_dir / name, **kw)
    elif work_dir.exists() and work_dir.resolve() != src.resolve():
        shutil.rmtree(work_dir)  # stale scaled frames of an earlier run
    uniq = {sizes[n] for n in names}
    size = next(iter(uniq)) if len(uniq) == 1 else None
    if size is not None and resize_needed:
        with Image.open(image_dir / names[0]) as im:
            size = im.size
    return FrameSet(image_dir=image_dir, names=names, source="folder", total=len(files),
                    dropped_blurred=drop, sharpness=scores, size=size)


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:300]
