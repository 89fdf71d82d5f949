"""Run folders and checkpoints: what a run folder holds, when it may be reused, and resuming safely.

A run folder (``s3dgs train SCENE --out RUN``) holds one run. ``train`` refuses a folder that
holds another run unless ``--resume`` (continue it) or ``--overwrite`` (replace it: only the files
a run writes are removed, nothing else in the folder). ``--resume`` checks that the scene and the
options that shape the model match the checkpoint's, and names those that differ.

Checkpoints ``RUN/ckpts/ckpt_<iteration>.pt`` are written atomically (:mod:`s3dgs.atomic`): a
failed write (a full disk) says so in one line, leaves no temporary file and keeps the last good
checkpoint. A checkpoint that cannot be read (truncated, empty) is named, set aside as
``ckpt_<iteration>.pt.corrupt``, and resuming continues from the previous good one. The temporary
file of a write that was killed half-way (``ckpts/.ckpt_<iteration>.pt.*.tmp``) is removed at the
next start (:func:`remove_stale_temporaries`; the run folder's lock, :mod:`s3dgs.runlock`, makes
sure no other process is writing it). After each good write only the newest ``--keep-checkpoints``
are kept (:func:`prune_checkpoints`; 0 keeps all).

A checkpoint also records the training frames (names, in the dataset's order: its view order
indexes them); ``--resume`` refuses a scene whose frames changed (:func:`check_frames`) and an
``--num-iterations`` below the checkpoint's iteration (:func:`check_resume_length`), and drops the
rows of ``metrics.jsonl`` written after the checkpoint (:func:`truncate_metrics`), so an
interrupted run resumed logs each iteration once.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from s3dgs.atomic import atomic_torch_save, atomic_write_text
from s3dgs.errors import UsageError

__all__ = [
    "RUN_OUTPUTS",
    "check_frames",
    "check_resume",
    "check_resume_length",
    "clear_run",
    "holds_run",
    "latest_checkpoint",
    "list_checkpoints",
    "load_latest_checkpoint",
    "prune_checkpoints",
    "remove_stale_temporaries",
    "save_checkpoint",
    "train_first_advice",
    "truncate_metrics",
]

RUN_OUTPUTS = ("config.json", "log.txt", "metrics.jsonl", "ckpts", "point_cloud.ply", "train_summary.json",
               "renders", "metrics.json", "classes", "report.html", "view.html", "pipeline.json", "depth_alignment.json",
               "phenotypes.json", "phenotypes.csv", "phenotypes.png", "plots")
"""Everything a run writes into its folder (``--overwrite`` removes exactly these)."""

_MARKERS = ("config.json", "ckpts", "point_cloud.ply", "train_summary.json")


def holds_run(out: str | Path) -> bool:
    """Whether ``out`` holds (part of) a training run."""
    out = Path(out)
    return any((out / m).exists() for m in _MARKERS)


def train_first_advice(run: str | Path) -> str:
    """What to run when ``RUN/point_cloud.ply`` is missing: ``--resume`` when RUN holds an
    interrupted training (a plain ``s3dgs train`` would refuse the folder), else a first training."""
    run = Path(run)
    scene = "SCENE"
    try:
        scene = json.loads((run / "config.json").read_text()).get("scene") or scene
    except (OSError, ValueError, AttributeError):
        pass
    if holds_run(run):
        ck = latest_checkpoint(run) if (run / "ckpts").is_dir() else None
        where = f" (latest checkpoint {ck.relative_to(run)})" if ck else ""
        return (f"the training in {run} did not finish{where}; continue it with "
                f"`s3dgs train {scene} --out {run} --resume`")
    return f"train first (`s3dgs train {scene} --out {run}`)"


def clear_run(out: str | Path) -> list[str]:
    """Remove the files and folders a run writes (:data:`RUN_OUTPUTS`) from ``out``; other files
    stay. Returns the names removed."""
    out = Path(out)
    removed = []
    for name in RUN_OUTPUTS:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def list_checkpoints(run: str | Path) -> list[Path]:
    """The run's checkpoints ``ckpts/ckpt_<iteration>.pt``, oldest first."""
    def it(p: Path) -> int:
        try:
            return int(p.stem.split("_")[1])
        except (IndexError, ValueError):
            return -1

    ckpts = [p for p in (Path(run) / "ckpts").glob("ckpt_*.pt") if it(p) >= 0]
    return sorted(ckpts, key=it)


def latest_checkpoint(run: str | Path) -> Path | None:
    ckpts = list_checkpoints(run)
    return ckpts[-1] if ckpts else None


def save_checkpoint(state: dict[str, Any], run: str | Path, step: int, keep: int = 0) -> Path:
    """Write ``state`` as ``RUN/ckpts/ckpt_<step>.pt`` atomically (WorkError naming it on failure),
    then keep only the newest ``keep`` checkpoints (:func:`prune_checkpoints`; 0 keeps all)."""
    path = atomic_torch_save(state, Path(run) / "ckpts" / f"ckpt_{step}.pt")
    prune_checkpoints(run, keep)
    return path


def prune_checkpoints(run: str | Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` checkpoints of ``run`` (``--keep-checkpoints``; 0 keeps
    all). Called after a write succeeded, so the newest good checkpoint is never the one removed.
    Returns the removed paths."""
    if keep <= 0:
        return []
    old = list_checkpoints(run)[:-keep]
    for p in old:
        p.unlink(missing_ok=True)
    return old


def load_latest_checkpoint(run: str | Path, device: torch.device | str = "cpu",
                           say: Callable[[str], None] = print) -> tuple[dict | None, Path | None]:
    """The newest readable checkpoint of ``run`` and its path, or ``(None, None)``. Unreadable ones
    (truncated, empty, not a checkpoint) are renamed ``*.pt.corrupt`` with one line each."""
    for path in reversed(list_checkpoints(run)):
        try:
            ck = torch.load(path, map_location=device, weights_only=False)
            if not isinstance(ck, dict) or "params" not in ck or "step" not in ck:
                raise ValueError("not an s3dgs checkpoint")
        except Exception as exc:  # noqa: BLE001 - any failure to read means: not usable
            bad = path.with_name(path.name + ".corrupt")
            path.replace(bad)
            say(f"resume: {path} cannot be read ({type(exc).__name__}: {str(exc)[:120]}); set aside as "
                f"{bad.name}, trying the previous checkpoint")
            continue
        return ck, path
    return None, None


# options whose change makes a checkpoint's model or data another run's: name -> how to read it
_MODEL_KEYS = {
    "scene": lambda c: c.get("scene"),
    "images": lambda c: (c.get("resolved_paths") or {}).get("images_dir"),
    "--sh-degree": lambda c: (c.get("train") or {}).get("sh_degree"),
    "classes": lambda c: c.get("classes"),
    "--no-semantics": lambda c: ((c.get("train") or {}).get("data") or {}).get("no_semantics"),
    "--no-depth": lambda c: ((c.get("train") or {}).get("data") or {}).get("no_depth"),
    "--resolution-scale": lambda c: ((c.get("train") or {}).get("data") or {}).get("resolution_scale"),
    "--test-every": lambda c: ((c.get("train") or {}).get("data") or {}).get("test_every"),
    "--sem-activation": lambda c: ((c.get("train") or {}).get("semantics") or {}).get("activation"),
    "--strategy": lambda c: (c.get("train") or {}).get("strategy"),
}
# Not in the list: --num-iterations (a resumed run may be extended; the schedule follows the new
# length) and --seed (the random state comes from the checkpoint).


def check_resume(saved: dict, now: dict, ckpt: Path) -> None:
    """Raise UsageError naming every model-shaping option in which ``now`` (this run's config dict,
    as written to config.json) differs from ``saved`` (the checkpoint's)."""
    diffs = []
    for name, get in _MODEL_KEYS.items():
        a, b = get(saved), get(now)
        if a is None and name in ("classes",):
            continue
        if a != b:
            diffs.append(f"{name}: {a!r} in the checkpoint, {b!r} now")
    if diffs:
        raise UsageError(f"--resume: {ckpt} belongs to another run; " + "; ".join(diffs) +
                         ". Resume with the same options, or pass --overwrite to start again.")


def check_frames(saved: list[str] | None, now: list[str], ckpt: Path, n_perm: int | None = None) -> None:
    """Raise UsageError when the training frames of the scene (``now``, names in dataset order)
    are not those the checkpoint ``ckpt`` was trained on (``saved``; None for a checkpoint that did
    not record them, then only their count ``n_perm``, the length of its view order, is compared).
    The message names the frames removed and added (the first few) and the fix."""
    if saved is None:
        if n_perm is None or n_perm == len(now):
            return
        raise UsageError(f"--resume: {ckpt} was trained on {n_perm} frames, the scene has {len(now)} training "
                         "frames now; resume on the same scene, or pass --overwrite to start again.")
    if list(saved) == list(now):
        return
    gone = [n for n in saved if n not in set(now)]
    new = [n for n in now if n not in set(saved)]

    def few(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    parts = [f"{len(saved)} frames in the checkpoint, {len(now)} in the scene now"]
    if gone:
        parts.append(f"removed: {few(gone)}")
    if new:
        parts.append(f"added: {few(new)}")
    if not gone and not new:
        parts.append("the same names in another order")
    raise UsageError(f"--resume: the scene's training frames changed since {ckpt} (" + "; ".join(parts) +
                     "). Resume on the frames it was trained on, or pass --overwrite to start again.")


def check_resume_length(step: int, num_iterations: int, ckpt: Path) -> None:
    """Raise UsageError when ``--num-iterations`` is below the iteration of the checkpoint resumed
    from (the model would be the longer run's while config and summary said the shorter one)."""
    if num_iterations < step:
        raise UsageError(f"--num-iterations {num_iterations}: below the iteration of {ckpt} ({step}); a run "
                         f"cannot be resumed shorter. Pass --num-iterations {step} or more, or --overwrite "
                         "to start again.")


def truncate_metrics(path: str | Path, step: int) -> int:
    """Drop the rows of a metrics.jsonl whose ``iter`` is beyond ``step`` (logged after the checkpoint
    a run resumes from; they are logged again). Rewritten atomically; returns the rows dropped. A
    line that is not JSON (the half-written last line of a killed run) is dropped too."""
    path = Path(path)
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            it = int(row.get("iter", 0)) if isinstance(row, dict) else 0
        except (ValueError, TypeError):
            dropped += 1
            continue
        if it > step:
            dropped += 1
        else:
            keep.append(line)
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in keep))
    return dropped


def remove_stale_temporaries(run: str | Path) -> list[Path]:
    """Remove the temporary files that a killed checkpoint write left in ``RUN/ckpts``
    (``.ckpt_<iteration>.pt.<random>.tmp``, the names :mod:`s3dgs.atomic` gives them). Call it only
    while holding the run folder's lock. Returns the files removed."""
    removed = []
    for p in (Path(run) / "ckpts").glob(".ckpt_*.pt.*.tmp"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed
