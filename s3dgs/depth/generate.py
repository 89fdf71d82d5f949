"""Depth Anything V2 priors for a folder of images: `generate_depth()` and `s3dgs depth`.

One 16-bit PNG per image (same stem, input resolution) holding the prediction as *disparity*
(near = bright) min-max normalised to [0, 1] per image, plus `meta.json` recording the backend,
the model, `"kind": "disparity"` and each image's raw range, so that
`raw = raw_min + png / 65535 * (raw_max - raw_min)` recovers the model's output (itself relative
disparity: metric depth needs a per-image scale and shift, fitted e.g. against SfM points).

Safe to interrupt: every map is written atomically and carries its own raw range in a PNG text
chunk; a rerun skips valid maps, redoes invalid ones, and rebuilds meta.json. A failed image is
counted and listed, never replaced by a blank map.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import tyro
from PIL import Image

from s3dgs.atomic import atomic_write
from s3dgs.depth.backends import (
    API_NAME,
    DEFAULT_MODEL,
    DEFAULT_SPACE,
    MULTIPLE,
    DepthBackendError,
    GradioBackend,
    Prediction,
    TransformersBackend,
    image_size,
    load_rgb,
    missing_model_message,
    model_availability,
    offline,
    space_label,
)
from s3dgs.depth.io import (
    META_NAME,
    DepthFileError,
    check_depth_png,
    encode_disparity,
    load_depth_png,
    read_depth_info,
    read_meta,
    save_depth_png,
    write_meta,
)
from s3dgs.depth.tiles import DEFAULT_OVERLAP, auto_tiles, predict_tiled
from s3dgs.errors import S3dgsError
from s3dgs.options import opt
from s3dgs.scene.frames import IMAGE_EXTS  # the one list of frame files

LOCK_NAME = ".s3dgs-depth.lock"
PNG_COMPRESS_LEVEL = 1  # 16-bit maps barely compress (noisy low bits); level 1 is ~3x faster than 6
META_EVERY_S = 2.0
MAX_CONSECUTIVE_SPACE_FAILURES = 3

FORMAT_TEXT = ("16-bit PNG, one per image, same stem, input resolution; "
               "png / 65535 = (raw - raw_min) / (raw_max - raw_min) per image")


class DepthError(S3dgsError, RuntimeError):
    """A usage problem (bad folder, nothing to do, ...); the message names the path and the fix."""


@dataclass
class DepthSummary:
    """What a `generate_depth` run did. `failed` maps image file name -> reason."""

    images: int = 0
    generated: int = 0
    skipped: int = 0
    redone: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    backend: str = ""
    model: str = ""
    out_dir: Path | None = None
    seconds: float = 0.0
    sources: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def images_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted


# --------------------------------------------------------------------------------------------
# folders
# --------------------------------------------------------------------------------------------

def list_images(images_dir: str | Path) -> list[Path]:
    """Image files in `images_dir` (not recursive), sorted by name; errors name the fix."""
    d = Path(images_dir).expanduser()
    if not d.exists():
        raise DepthError(f"images folder {d} does not exist; pass the folder of frames as IMAGES")
    if not d.is_dir():
        raise DepthError(f"{d} is not a folder; pass the folder of frames as IMAGES")
    files = sorted(p for p in d.iterdir()
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))
    if not files:
        raise DepthError(f"no images ({', '.join(IMAGE_EXTS)}) in {d}; is this the right folder?")
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise DepthError(f"{seen[p.stem].name} and {p.name} in {d} share the stem {p.stem!r}, so both "
                             f"would be written to {p.stem}.png; rename or remove one")
        seen[p.stem] = p
    return files


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _prepare_out_dir(out: Path) -> Path:
    """Create `out`, prove it writable, take the single-writer lock, clear stale temp files."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DepthError(f"cannot write to the output folder {out} ({exc.strerror or exc}); "
                         "choose a writable folder as OUT or fix its permissions") from None
    lock = out / LOCK_NAME
    if lock.exists():
        try:
            pid = int(lock.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid and pid != os.getpid() and _pid_alive(pid):
            raise DepthError(f"another `s3dgs depth` run (pid {pid}) is writing to {out}; wait for it, "
                             f"or delete {lock} if that process is not a depth run")
    lock.write_text(str(os.getpid()))
    for tmp in list(out.glob(".*.tmp")):  # left by a killed run (atomic writes never finished)
        try:
            tmp.unlink()
        except OSError:
            pass
    return lock


# --------------------------------------------------------------------------------------------
# meta.json
# --------------------------------------------------------------------------------------------

class _MetaBook:
    """Keeps depths/meta.json in step with the maps; written atomically, at most every 2 s."""

    def __init__(self, out: Path, log: Callable[[str], None]):
        self.out = out
        try:
            old = read_meta(out)
        except DepthFileError as exc:
            log(f"  note: {exc}; rebuilding it from the maps")
            old = {}
        images = old.get("images")
        self.images: dict[str, dict] = dict(images) if isinstance(images, dict) else {}
        self.failed: dict[str, str] = {}
        self.extra = {k: v for k, v in old.items() if k not in ("images", "failed", "backend", "model",
                                                                  "kind", "updated", "format", "near",
                                                                  "simulated")}
        self._last = 0.0
        self.dirty = False

    def set(self, stem: str, entry: dict) -> None:
        self.images[stem] = entry
        self.failed.pop(entry.get("image", stem), None)
        self.dirty = True

    def fail(self, stem: str, name: str, reason: str) -> None:
        self.failed[name] = reason
        self.dirty = True

    def as_dict(self) -> dict:
        def one(key: str):
            vals = sorted({str(e.get(key)) for e in self.images.values() if e.get(key) is not None})
            return vals[0] if len(vals) == 1 else (vals or None)

        meta = dict(self.extra)
        meta.update({
            "kind": "disparity",
            "near": "bright",
            "simulated": False,
            "format": FORMAT_TEXT,
            "backend": one("backend"),
            "model": one("model"),
            "images": dict(sorted(self.images.items())),
            "failed": dict(sorted(self.failed.items())),
            "updated": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        })
        return meta

    def save(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.dirty and (force or now - self._last >= META_EVERY_S):
            write_meta(self.out, self.as_dict())
            self._last = now
            self.dirty = False


# --------------------------------------------------------------------------------------------
# generation
# --------------------------------------------------------------------------------------------

def _make_backend(backend: str, model: str, space: str, device: str, batch_size: int, input_size: int,
                  retries: int, backoff: float, log: Callable[[str], None]):
    if backend == "auto":
        ok, reason = model_availability(model)
        if ok:
            backend = "transformers"
        elif offline() and not space.startswith(("http://", "https://")):
            # the hub Space cannot be reached in offline mode either: say how to get the model
            raise DepthBackendError(missing_model_message(model, reason))
        else:
            log(f"Local model not available ({reason}); using the {space_label(space)} (--depth-backend gradio)")
            backend = "gradio"
    if backend == "transformers":
        log(f"Loading Depth Anything V2 model {model}...")
        b = TransformersBackend(model, device=device, batch_size=batch_size, input_size=input_size)
        log(f"Model ready! ({b.describe()})")
        return b
    if backend == "gradio":
        log("Setting up Depth Anything V2 client...")
        b = GradioBackend(space, retries=retries, backoff=backoff, log=log)
        log(f"Client ready! ({b.describe()})")
        return b
    raise DepthError(f"unknown backend {backend!r}; choose transformers, gradio or auto")


def generate_depth(
    images_dir: str | Path,
    out_dir: str | Path,
    *,
    backend: Literal["auto", "transformers", "gradio"] | object = "auto",
    model: str = DEFAULT_MODEL,
    space: str = DEFAULT_SPACE,
    device: str = "auto",
    batch_size: int = 0,
    input_size: int = 518,
    retries: int = 5,
    backoff: float = 2.0,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    tiles: int | str = 1,
    tile_overlap: float = DEFAULT_OVERLAP,
) -> DepthSummary:
    """Write one Depth Anything V2 disparity map per image of `images_dir` into `out_dir`.

    Args:
        images_dir: folder of frames (jpg/png/...); maps are named `<stem>.png`.
        out_dir: output folder (conventionally `scene/depths`); created if needed.
        backend: "transformers" (local model), "gradio" (the Space or a URL), "auto"
            (transformers when `model` is available locally or downloadable, else gradio), or an
            already built backend object (`TransformersBackend` / `GradioBackend`).
        model: hub id or local folder for the transformers backend.
        space: Space id (`owner/name`) or URL for the gradio backend.
        device: "auto", "cpu", "cuda", "cuda:1", ... (transformers).
        batch_size: images per forward pass (transformers); 0 = 1 on CPU, 8 on CUDA.
        input_size: model input short side (transformers), a multiple of 14; 518 as trained.
        retries, backoff: gradio retries per image and the first back-off in seconds (doubling).
        overwrite: regenerate maps that already exist and are valid.
        progress: show a progress bar (images per second).
        log: where messages go (print by default).
        tiles: tiles per side (1: one pass over the whole frame), or "auto": enough that each
            tile's short side is at most the network's input short side, so the network sees the
            frame at its native resolution (`s3dgs.depth.tiles`). Each tile is predicted at the
            network's input size, aligned (scale and shift in disparity) to the whole-frame
            prediction and blended with smooth ramps over `tile_overlap` (a fraction of a tile).

    Returns:
        DepthSummary (generated / skipped / failed with reasons). Problems with the folders or
        the backend set-up raise DepthError / DepthBackendError with a message saying the fix.
    """
    from tqdm.auto import tqdm

    t_start = time.perf_counter()
    files = list_images(images_dir)
    out = Path(out_dir).expanduser()
    lock = _prepare_out_dir(out)
    summary = DepthSummary(images=len(files), out_dir=out)
    bar = None
    say = log
    own_backend = not hasattr(backend, "name")
    engine = None
    try:
        log(f"Found {len(files)} images to process")
        book = _MetaBook(out, log)

        # --- what is already done -------------------------------------------------------------
        todo: list[tuple[Path, Path, tuple[int, int]]] = []
        invalid: set[Path] = set()  # existing maps found invalid: removed if their redo fails
        check_iter = files
        if len(files) > 50 and not overwrite and any(out.glob("*.png")):
            check_iter = tqdm(files, desc="Checking existing maps", unit="img", disable=not progress,
                              leave=False)
        for img in check_iter:
            dst = out / f"{img.stem}.png"
            try:
                size = image_size(img)
            except Exception:
                size = None  # unreadable: it will fail with a clear message when loaded
            if dst.exists() and size is not None:
                problem = check_depth_png(dst, size)
                if problem is None and not overwrite:
                    summary.skipped += 1
                    if img.stem not in book.images or book.images[img.stem].get("image") != img.name:
                        info = read_depth_info(dst) or {"source": "unknown"}
                        info.update(image=img.name, size=list(size))
                        book.set(img.stem, info)
                    continue
                if problem is not None:
                    log(f"  redoing {dst.name}: {problem}")
                    summary.redone += 1
                    invalid.add(dst)
            todo.append((img, dst, size))
        if summary.skipped:
            log(f"  {summary.skipped} maps already valid (skipped), {len(todo)} to generate")
        book.save(force=True)
        if not todo:
            log("Nothing to do.")
            return summary

        # --- backend ----------------------------------------------------------------------------
        engine = (_make_backend(backend, model, space, device, batch_size, input_size, retries, backoff,
                                log)
                  if own_backend else backend)
        summary.backend = engine.name
        summary.model = engine.model_id

        bar = tqdm(total=len(todo), desc="Generating depth maps", unit="img", disable=not progress,
                   dynamic_ncols=True)
        say = bar.write if progress else log

        def finish(img: Path, dst: Path, pred: Prediction | None, error: Exception | None) -> None:
            if error is None:
                try:
                    u16, lo, hi = encode_disparity(pred.raw)
                    entry = {"image": img.name, "size": [int(u16.shape[1]), int(u16.shape[0])],
                             "raw_min": lo, "raw_max": hi, "source": pred.source,
                             "backend": engine.name, "model": engine.model_id}
                    if pred.note:
                        entry["note"] = pred.note
                    if getattr(engine, "input_size", None):
                        entry["input_size"] = engine.input_size
                    if pred_tiles.get(img.name, 1) > 1:
                        entry["tiles"] = pred_tiles[img.name]
                        entry["tile_overlap"] = tile_overlap
                    save_depth_png(dst, u16, info=entry, compress_level=PNG_COMPRESS_LEVEL)
                except (DepthFileError, OSError) as exc:
                    error = exc
            if error is None:
                book.set(img.stem, entry)
                summary.generated += 1
                summary.sources[pred.source] = summary.sources.get(pred.source, 0) + 1
            else:
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                summary.failed[img.name] = reason
                book.fail(img.stem, img.name, reason)
                if dst in invalid:  # never leave a broken map where a reader would take it as valid
                    dst.unlink(missing_ok=True)
                if not dst.exists():  # (with --overwrite a valid old map and its entry stay)
                    book.images.pop(img.stem, None)
                say(f"  failed: {img.name}: {reason}")
            bar.update(1)
            book.save()

        pred_tiles: dict[str, int] = {}  # image name -> tiles per side used
        tile = _tiler(engine, tiles, tile_overlap, pred_tiles) if str(tiles) != "1" else None
        if engine.name == "gradio":
            _run_gradio(engine, todo, finish, say, log, tile)
        else:
            _run_transformers(engine, todo, finish, say, tile)
    except KeyboardInterrupt:
        summary.interrupted = True
        say("Interrupted: maps written so far are complete; rerun the same command to resume.")
    finally:
        if bar is not None:
            bar.close()
        if "book" in locals():
            try:
                book.save(force=True)
            except OSError as exc:
                log(f"  warning: could not write {out / META_NAME}: {exc}")
        if own_backend and engine is not None:
            engine.close()
        try:
            lock.unlink()
        except OSError:
            pass
        summary.seconds = time.perf_counter() - t_start
    return summary


def tiles_for(tiles: int | str, height: int, width: int, short: int = 518,
              overlap: float = DEFAULT_OVERLAP) -> int:
    """Tiles per side for a frame: ``tiles`` itself, or for ``"auto"`` :func:`s3dgs.depth.tiles.auto_tiles`
    at the network's input short side ``short``."""
    if str(tiles) == "auto":
        return auto_tiles(height, width, short, overlap)
    return max(1, int(tiles))


def _tiler(engine, tiles: int | str, overlap: float, used: dict[str, int]):
    """``tile(name, rgb, pred) -> Prediction``: the tiled prediction of one image around the
    engine's predict function (the whole-frame ``pred`` is reused), or ``pred`` itself with one tile."""
    short = getattr(engine, "input_size", None) or 518

    def predict_many(crops: list[np.ndarray]) -> list[np.ndarray]:
        if hasattr(engine, "predict_batch"):
            return [p.raw for p in engine.predict_batch(crops)]
        out = []
        with tempfile.TemporaryDirectory(prefix="s3dgs-tiles-") as tmp:  # the Space takes files
            for k, crop in enumerate(crops):
                path = Path(tmp) / f"tile{k}.png"
                Image.fromarray(crop).save(path)
                out.append(engine.predict(path, (crop.shape[1], crop.shape[0])).raw)
        return out

    def tile(name: str, rgb: np.ndarray, pred: Prediction) -> Prediction:
        n = tiles_for(tiles, rgb.shape[0], rgb.shape[1], short, overlap)
        used[name] = n
        if n <= 1:
            return pred
        merged, info = predict_tiled(predict_many, rgb, n, overlap, full=pred.raw,
                                     batch_size=getattr(engine, "batch_size", 1))
        note = pred.note
        if info["replaced"]:
            extra = f"{info['replaced']} of {info['tiles']} tiles kept the whole-frame prediction (flat tile)"
            note = f"{note}; {extra}" if note else extra
        return Prediction(raw=merged, source=pred.source, note=note)

    return tile


def _run_transformers(engine: TransformersBackend, todo, finish, say, tile=None) -> None:
    """Load ahead in one thread, run the model in batches of one size, encode/write in another."""
    bs = engine.batch_size
    with ThreadPoolExecutor(1, thread_name_prefix="depth-load") as loader, \
            ThreadPoolExecutor(1, thread_name_prefix="depth-write") as writer:
        loads: deque[tuple[Path, Path, Future]] = deque()
        writes: deque[Future] = deque()
        it = iter(todo)

        def fill() -> None:
            while len(loads) < 2 * bs + 1:
                nxt = next(it, None)
                if nxt is None:
                    return
                img, dst, _ = nxt
                loads.append((img, dst, loader.submit(load_rgb, img)))

        def drain(limit: int) -> None:
            while writes and (len(writes) > limit or writes[0].done()):
                writes.popleft().result()

        def run(batch: list[tuple[Path, Path, np.ndarray]]) -> None:
            if not batch:
                return
            try:
                preds = engine.predict_batch([b[2] for b in batch])
            except Exception as exc:
                if len(batch) > 1:  # retry one by one so one bad input cannot sink the others
                    for b in batch:
                        run([b])
                    return
                preds, err = [None], exc
            else:
                err = None
            for (img, dst, rgb), pred in zip(batch, preds):
                if tile is not None and err is None:
                    try:
                        pred = tile(img.name, rgb, pred)
                    except Exception as exc:  # one image's tiles failing sinks that image only
                        writes.append(writer.submit(finish, img, dst, None, exc))
                        continue
                writes.append(writer.submit(finish, img, dst, pred, err))
            drain(2 * bs)

        fill()
        batch: list[tuple[Path, Path, np.ndarray]] = []
        try:
            while loads:
                img, dst, fut = loads.popleft()
                fill()
                try:
                    rgb = fut.result()
                except Exception as exc:
                    drain(0)
                    finish(img, dst, None, exc)
                    continue
                if batch and (rgb.shape != batch[0][2].shape or len(batch) >= bs):
                    run(batch)
                    batch = []
                batch.append((img, dst, rgb))
                if len(batch) >= bs:
                    run(batch)
                    batch = []
            run(batch)
            drain(0)
        except BaseException:
            for _, _, f in loads:
                f.cancel()
            for f in writes:  # let in-flight atomic writes finish; they are complete or absent
                try:
                    f.result()
                except Exception:
                    pass
            raise


def _run_gradio(engine: GradioBackend, todo, finish, say, log, tile=None) -> None:
    """One image at a time (the Space is rate-limited); the first call doubles as the API test."""
    consecutive = 0
    for k, (img, dst, size) in enumerate(todo):
        try:
            rgb = load_rgb(img)  # fail here, with the file's name, not on the server
        except ValueError as exc:
            finish(img, dst, None, exc)
            continue
        size = (rgb.shape[1], rgb.shape[0])
        if tile is None:
            del rgb
        if k == 0:
            say("\nTesting API connection...")
            try:
                result = engine.call_with_retries(img, on_retry=say)
            except DepthBackendError as exc:
                say(f"✗ API connection failed: {exc}")
                raise DepthBackendError(
                    f"{exc}\n  The {space_label(engine.space)} did not answer; check the network and "
                    "the Space's status, pass another --space, or run locally with --depth-backend "
                    "transformers") from None
            say("✓ API connection successful!")
            say(f"  Result type: {type(result)}")
            raw_p = result[2] if isinstance(result, (tuple, list)) and len(result) > 2 else result
            say(f"  Result path: {raw_p}\n")
            try:
                pred = engine.parse(result, size)
            except Exception as exc:
                finish(img, dst, None, exc)
                continue
            if pred.note:
                say(f"  note: {img.name}: {pred.note}")
            if tile is not None:
                try:
                    pred = tile(img.name, rgb, pred)
                except Exception as exc:
                    finish(img, dst, None, exc)
                    continue
            finish(img, dst, pred, None)
            continue
        try:
            pred = engine.predict(img, size, on_retry=say)
            if tile is not None:
                pred = tile(img.name, rgb, pred)
        except Exception as exc:
            finish(img, dst, None, exc)
            consecutive += 1
            if consecutive >= MAX_CONSECUTIVE_SPACE_FAILURES:
                rest = todo[k + 1:]
                say(f"  {consecutive} images in a row failed; stopping ({len(rest)} not attempted). "
                    "Rerun later to resume.")
                for img2, dst2, _ in rest:
                    finish(img2, dst2, None, RuntimeError(
                        f"not attempted: the {space_label(engine.space)} kept failing"))
                return
            continue
        consecutive = 0
        if pred.note and pred.source == "gray8":
            say(f"  note: {img.name}: {pred.note}")
        finish(img, dst, pred, None)


def print_summary(summary: DepthSummary, log: Callable[[str], None] = print) -> None:
    """The integration guide's summary lines, plus the failures by name and where the maps are."""
    log("Processing complete!" if not summary.interrupted else "Processing interrupted!")
    log(f"  Successfully generated: {summary.generated}")
    log(f"  Skipped (already exists): {summary.skipped}")
    log(f"  Failed: {len(summary.failed)}")
    for name, reason in sorted(summary.failed.items()):
        log(f"    - {name}: {reason}")
    if summary.generated:
        log(f"  Backend: {summary.backend} ({summary.model}), "
            f"{summary.images_per_s:.2f} images/s overall")
    if summary.backend == "gradio" and summary.sources:
        parts = [f"{n} from the {'16-bit raw' if s == 'raw16' else '8-bit gray'} output"
                 for s, n in sorted(summary.sources.items())]
        log(f"  Space outputs used: {', '.join(parts)}")
    if summary.out_dir is not None:
        log(f"  Depth maps: {summary.out_dir} (disparity, near = bright, normalised per image; "
            f"raw ranges in {META_NAME})")
    if summary.failed:
        log("  Rerun the same command to retry the failed images (valid maps are skipped).")


# --------------------------------------------------------------------------------------------
# verification and contact sheet
# --------------------------------------------------------------------------------------------

@dataclass
class VerifyReport:
    checked: int = 0
    valid: int = 0
    problems: dict[str, str] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)
    sheet: Path | None = None

    @property
    def ok(self) -> bool:
        return self.checked > 0 and not self.problems


def _expected_maps(depth_dir: Path, images_dir: Path | None) -> dict[str, tuple[Path | None, tuple | None]]:
    """stem -> (image path or None, expected (w, h) or None)."""
    try:
        meta = read_meta(depth_dir)
    except DepthFileError:
        meta = {}
    images = meta.get("images") if isinstance(meta.get("images"), dict) else {}
    listed = {stem: (None, tuple(e["size"]) if isinstance(e, dict) and e.get("size") else None)
              for stem, e in images.items()}
    if images_dir is not None:
        # the images' maps, and every map meta.json lists besides (its image may have gone)
        return {**listed, **{p.stem: (p, None) for p in list_images(images_dir)}}
    if listed:
        return listed
    return {p.stem: (None, None) for p in sorted(depth_dir.glob("*.png"))}


def verify_depths(depth_dir: str | Path, images_dir: str | Path | None = None, *, num_samples: int = 0,
                  sheet_path: str | Path | None = None, log: Callable[[str], None] = print) -> VerifyReport:
    """Check a depth folder: every map present, the image's size, 16-bit, non-constant.

    Args:
        depth_dir: folder of maps.
        images_dir: the images they were made from; without it the expected names and sizes come
            from meta.json (else every PNG in the folder is checked for format only).
        num_samples: also write a contact sheet of this many evenly spaced samples (image and
            coloured disparity side by side) and print their statistics.
        sheet_path: where the sheet goes (default DEPTH_DIR/verify/contact_sheet.png).
    """
    d = Path(depth_dir).expanduser()
    if not d.is_dir():
        raise DepthError(f"depth folder {d} does not exist; generate it with `s3dgs depth IMAGES {d}`")
    expected = _expected_maps(d, Path(images_dir).expanduser() if images_dir else None)
    rep = VerifyReport()
    log(f"Verifying {len(expected)} depth maps in {d}...")
    for stem, (img, size) in expected.items():
        rep.checked += 1
        if img is not None:
            try:
                size = image_size(img)
            except Exception as exc:
                rep.problems[f"{stem}.png"] = f"its image {img.name} is unreadable ({exc})"
                continue
        problem = check_depth_png(d / f"{stem}.png", size)
        if problem:
            rep.problems[f"{stem}.png"] = problem
        else:
            rep.valid += 1
    rep.extra = sorted(p.name for p in d.glob("*.png") if p.stem not in expected)
    if rep.problems:
        log(f"✗ {len(rep.problems)} of {rep.checked} depth maps have problems:")
        for name, why in sorted(rep.problems.items()):
            log(f"    - {name}: {why}")
        log("  Rerun `s3dgs depth IMAGES OUT` to regenerate them (valid maps are skipped).")
    elif rep.checked:
        log(f"✓ All {rep.checked} depth maps valid (16-bit, image size, non-constant)")
    else:
        log("✗ no depth maps to check")
    if rep.extra:
        log(f"  note: {len(rep.extra)} PNGs without a matching image, e.g. {rep.extra[0]}")
    if num_samples > 0:
        good = [s for s in expected if f"{s}.png" not in rep.problems]
        if good:
            idx = np.unique(np.linspace(0, len(good) - 1, min(num_samples, len(good))).round().astype(int))
            samples = [good[i] for i in idx]
            for s in samples:
                v = load_depth_png(d / f"{s}.png")
                log(f"  {s}.png: {v.shape[1]}x{v.shape[0]}, range [{v.min():.3f}, {v.max():.3f}], "
                    f"mean {v.mean():.3f}")
            sheet = Path(sheet_path) if sheet_path else d / "verify" / "contact_sheet.png"
            contact_sheet(d, [(s, expected[s][0]) for s in samples], sheet)
            rep.sheet = sheet
            log(f"  Contact sheet ({len(samples)} samples: image | disparity, near = bright): {sheet}")
    return rep


def _colourise(v01: np.ndarray) -> np.ndarray:
    try:
        from matplotlib import colormaps

        return (colormaps["Spectral_r"](v01)[..., :3] * 255).astype(np.uint8)
    except Exception:
        g = (v01 * 255).astype(np.uint8)
        return np.stack([g, g, g], -1)


def contact_sheet(depth_dir: Path, samples: list[tuple[str, Path | None]], path: Path,
                  row_height: int = 200) -> Path:
    """Rows of (image | coloured disparity) for the given (stem, image path or None)."""
    from PIL import ImageDraw

    rows = []
    for stem, img in samples:
        v = load_depth_png(Path(depth_dir) / f"{stem}.png")
        h, w = v.shape
        tw = max(1, round(w * row_height / h))
        dep = Image.fromarray(_colourise(v)).resize((tw, row_height), Image.BILINEAR)
        if img is not None:
            try:
                rgb = Image.fromarray(load_rgb(img)).resize((tw, row_height), Image.BILINEAR)
            except ValueError:
                rgb = Image.new("RGB", (tw, row_height), (64, 64, 64))
        else:
            rgb = Image.new("RGB", (tw, row_height), (64, 64, 64))
        row = Image.new("RGB", (2 * tw + 8, row_height + 16), (255, 255, 255))
        row.paste(rgb, (0, 16))
        row.paste(dep, (tw + 8, 16))
        ImageDraw.Draw(row).text((2, 2), f"{stem}   (disparity, near = bright/red)", fill=(0, 0, 0))
        rows.append(row)
    width = max(r.width for r in rows)
    sheet = Image.new("RGB", (width, sum(r.height for r in rows)), (255, 255, 255))
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return path


# --------------------------------------------------------------------------------------------
# API check (preprocess/test_depth_api.py)
# --------------------------------------------------------------------------------------------

def check_space(space: str = DEFAULT_SPACE, image: str | Path | None = None, retries: int = 2,
                backoff: float = 2.0, log: Callable[[str], None] = print) -> int:
    """Call the Space once and print what came back, as the integration guide's test script did. 0 = works."""
    tmpdir = None
    if image is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="s3dgs-depth-api-")
        image = Path(tmpdir.name) / "test_image.png"
        y, x = np.mgrid[0:192, 0:256]
        rgb = np.stack([x * 255 // 255, y * 255 // 191, (x + y) % 256], -1).astype(np.uint8)
        Image.fromarray(rgb).save(image)
        log(f"No image given; using a generated test image {image}")
    image = Path(image)
    try:
        log(f"Testing Depth Anything V2 API: {space_label(space)}, endpoint {API_NAME}")
        log("Setting up Depth Anything V2 client...")
        try:
            engine = GradioBackend(space, retries=retries, backoff=backoff, log=log)
        except DepthBackendError as exc:
            log(f"✗ API connection failed: {exc}")
            return 1
        log("Client ready!")
        try:
            size = image_size(image)
            load_rgb(image)
        except Exception as exc:
            log(f"✗ cannot read the test image: {exc}")
            engine.close()
            return 1
        log("\nTesting API connection...")
        try:
            result = engine.call_with_retries(image)
        except DepthBackendError as exc:
            log(f"✗ API connection failed: {exc}")
            engine.close()
            return 1
        log("✓ API connection successful!")
        log(f"  Result type: {type(result)}")
        parts = list(result) if isinstance(result, (tuple, list)) else [result]
        log(f"  Result path: {parts[-1] if parts else result}")
        labels = ["image-slider pair", "8-bit gray PNG", "16-bit raw PNG"]
        for label, part in zip(labels, parts):
            log(f"    {label}: {part}")
        try:
            pred = engine.parse(result, size)
        except Exception as exc:
            log(f"✗ unexpected outputs: {exc}")
            return 1
        finally:
            engine.close()
        which = {"raw16": "the 16-bit raw output", "gray8": "the 8-bit gray output"}[pred.source]
        log(f"  Depth used: {which}, {pred.raw.shape[1]}x{pred.raw.shape[0]}, raw range "
            f"[{pred.raw.min():.4g}, {pred.raw.max():.4g}]" + (f" ({pred.note})" if pred.note else ""))
        return 0
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()


# --------------------------------------------------------------------------------------------
# CLI configurations (s3dgs depth, s3dgs depth verify)
# --------------------------------------------------------------------------------------------

@dataclass
class DepthConfig:
    """Depth Anything V2 disparity priors for a folder of frames, as 16-bit PNGs + meta.json."""

    images: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="IMAGES")]]
    """Folder of input frames (jpg, png, ...)."""
    out: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="OUT")]]
    """Output folder for `<stem>.png` maps and meta.json (conventionally SCENE/depths)."""
    backend: Annotated[Literal["auto", "transformers", "gradio"], tyro.conf.arg(name="depth-backend")] = "auto"
    """transformers: local model (CPU/CUDA, private, no rate limit); gradio: the public Space (no model download, ~1.25 s/image, rate-limited); auto: transformers when the model is available (local folder, cache, or downloadable), else gradio."""
    model: str = DEFAULT_MODEL
    """transformers model: hub id (Depth-Anything-V2-{Small,Base,Large}-hf) or a local folder."""
    device: str = "auto"
    """transformers device: auto, cpu, cuda, cuda:N."""
    batch_size: int = 0
    """Images per forward pass (transformers); 0 = 1 on CPU, 8 on CUDA."""
    input_size: int = 518
    """Model input short side (transformers), a multiple of 14; 518 as Depth Anything V2 was trained, smaller is faster and coarser."""
    space: str = DEFAULT_SPACE
    """gradio backend: Space id (owner/name) or URL of an app exposing /on_submit."""
    retries: int = 5
    """gradio backend: retries per image on rate limits and transient errors."""
    backoff: float = 2.0
    """gradio backend: first retry delay in seconds (doubles each retry)."""
    overwrite: bool = False
    """Regenerate maps that already exist and are valid (without it they are kept)."""
    tiles: Annotated[str, opt("N|auto", "1")] = "1"
    """Tiles per side: N x N overlapping crops, each predicted at the network's input size, aligned to the whole-frame prediction and blended (thin stems resolve better; N*N+1 passes per image). auto: enough that each tile's short side is at most --input-size frame pixels (1 for frames that small). Existing maps are skipped: add --overwrite to redo them tiled."""
    tile_overlap: float = DEFAULT_OVERLAP
    """Overlap of neighbouring tiles, a fraction of a tile (0.05-0.5); blended with smooth ramps."""
    verify: bool = False
    """After generating, check every map (present, image size, 16-bit, non-constant)."""
    num_samples: int = 0
    """With --verify: also write a contact sheet of N samples to OUT/verify/contact_sheet.png."""
    progress: bool = True
    """Show a progress bar."""

    def validate(self) -> None:
        """Refuse nonsense options with one UsageError naming the option."""
        from s3dgs import validate as V

        V.non_negative("--batch-size", self.batch_size)
        V.multiple_of("--input-size", self.input_size, MULTIPLE)
        V.non_negative("--retries", self.retries)
        V.non_negative("--backoff", self.backoff)
        V.non_negative("--num-samples", self.num_samples)
        V.in_range("--tile-overlap", self.tile_overlap, 0.05, 0.5)
        _check_tiles(self.tiles)
        _check_device(self.device)


def _check_tiles(tiles: str) -> None:
    from s3dgs.errors import UsageError

    t = str(tiles).strip()
    if t == "auto":
        return
    if not t.isdigit() or not 1 <= int(t) <= 16:
        raise UsageError(f"--tiles must be a number of tiles per side from 1 to 16, or auto; got {tiles!r}")


def _check_device(device: str) -> None:
    import re

    from s3dgs.errors import UsageError

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise UsageError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {device!r}")


@dataclass
class VerifyConfig:
    """Check a depth folder: every map present, the image's size, 16-bit, non-constant."""

    depths: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="DEPTHS")]]
    """Depth folder to check (e.g. SCENE/depths)."""
    images: Annotated[Path | None, opt("DIR", "the images folder beside DEPTHS, else meta.json's names and sizes")] = None
    """Images the maps were made from."""
    num_samples: int = 0
    """Also write a contact sheet of N samples (image | coloured disparity)."""
    sheet: Annotated[Path | None, opt("FILE", "DEPTHS/verify/contact_sheet.png")] = None
    """Contact sheet path."""

    def validate(self) -> None:
        """Refuse nonsense options with one UsageError naming the option."""
        from s3dgs import validate as V

        V.non_negative("--num-samples", self.num_samples)


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def depth_main(cfg: DepthConfig) -> int:
    """`s3dgs depth`: returns 0 when every image has a valid map, 1 when any failed, 2 on usage errors."""
    cfg.validate()
    try:
        summary = generate_depth(cfg.images, cfg.out, backend=cfg.backend, model=cfg.model,
                                 space=cfg.space, device=cfg.device, batch_size=cfg.batch_size,
                                 input_size=cfg.input_size,
                                 retries=cfg.retries, backoff=cfg.backoff, overwrite=cfg.overwrite,
                                 progress=cfg.progress,
                                 tiles=cfg.tiles if cfg.tiles == "auto" else int(cfg.tiles),
                                 tile_overlap=cfg.tile_overlap)
    except DepthError as exc:
        _err(str(exc))
        return 2
    except DepthBackendError as exc:
        _err(str(exc))
        return 1
    print_summary(summary)
    status = 0 if summary.ok else (130 if summary.interrupted else 1)
    if cfg.verify and not summary.interrupted:
        print()
        try:
            rep = verify_depths(cfg.out, cfg.images, num_samples=cfg.num_samples)
        except DepthError as exc:
            _err(str(exc))
            return 2
        if not rep.ok and status == 0:
            status = 1
    return status


def verify_main(cfg: VerifyConfig) -> int:
    """`s3dgs depth verify`: 0 when every map is valid, 1 otherwise, 2 on usage errors."""
    cfg.validate()
    images = cfg.images
    if images is None:
        beside = Path(cfg.depths).expanduser().parent / "images"
        images = beside if beside.is_dir() else None
    try:
        rep = verify_depths(cfg.depths, images, num_samples=cfg.num_samples, sheet_path=cfg.sheet)
    except DepthError as exc:
        _err(str(exc))
        return 2
    return 0 if rep.ok else 1
