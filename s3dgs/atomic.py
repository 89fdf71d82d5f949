"""The one atomic-write helper: write to a temporary file beside the target, then rename.

An interrupted or failed write never leaves a half-written file under the target's name and never
leaves its temporary file behind; the target gets the usual permissions (0666 minus the umask,
0644 with the common umask), not the 0600 of a bare ``tempfile.mkstemp``. A write that fails for
lack of space (or any other OS error) raises :class:`s3dgs.errors.WorkError` naming the file, and
the previous content of the target, if any, stays.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s3dgs.errors import WorkError

__all__ = ["atomic_write", "atomic_write_text", "atomic_torch_save", "check_writable_folder"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write_fn: Callable[[str], Any]) -> Path:
    """Call ``write_fn(tmp_path)`` to write a temporary file beside ``path``, then rename it to
    ``path``. Returns ``path``. Raises WorkError (naming ``path``) when the write fails with an
    OS error such as a full disk; the temporary file is removed in every case."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # a file where a folder should be, a read-only or full disk
        raise WorkError(f"{path}: could not be written ({_reason(exc, path.parent)}). Choose another "
                        "folder or make this one writable.") from exc
    os.close(fd)
    try:
        write_fn(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if (isinstance(exc, OSError) or isinstance(exc.__cause__, OSError) or _is_enospc(exc)
                or _is_torch_write_failure(exc)):
            reason = "the disk is full" if _is_enospc(exc) or _disk_nearly_full(path.parent) else str(exc)
            if _is_torch_write_failure(exc) and reason != "the disk is full":
                reason = "torch.save could not write it: is the disk full?"
            raise WorkError(f"{path}: could not be written ({reason}); the previous file, if any, "
                            "is unchanged. Free some space or choose another folder.") from exc
        raise
    return path


def _reason(exc: OSError, folder: Path) -> str:
    """Why a folder cannot be written into, in words."""
    if _is_enospc(exc):
        return "the disk is full"
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        blocker = _file_in_the_way(folder)
        return f"{blocker} is a file, not a folder" if blocker else exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{exc.filename or folder} is read-only ({exc.strerror})"
    return exc.strerror or str(exc)


def _file_in_the_way(folder: Path) -> Path | None:
    """The first path from ``folder`` upwards that exists and is not a folder, or None."""
    for p in (folder, *folder.parents):
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


def check_writable_folder(folder: str | Path, option: str, files: tuple[str, ...] = ()) -> Path:
    """Check, before any work, that ``folder`` (given as ``option``, e.g. ``"--out"``) is or can
    become a folder that this process can write into: not an existing file, no file in the way
    above it, not read-only; and that none of ``files`` (names inside it the command will write,
    e.g. ``("metrics.json",)``) is a folder. Creates nothing. Raises UsageError (a file or folder in
    the way) or WorkError (read-only, naming the folder) with the fix. Returns ``folder`` as a Path.

    Written by hand because no library checks a folder that may not exist yet: ``os.access``
    on the nearest existing ancestor, then a real probe file there (``os.access`` says yes to
    root on a folder that is immutable)."""
    from s3dgs.errors import UsageError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {folder}: exists and is not a folder; choose another {option}")
    blocker = _file_in_the_way(folder)
    if blocker is not None:
        raise UsageError(f"{option} {folder}: {blocker} is a file, not a folder; choose another {option}")
    base = next(p for p in (folder, *folder.parents) if p.exists())
    problem = None if os.access(base, os.W_OK | os.X_OK) else "permission denied"
    if problem is None:
        try:
            fd, probe = tempfile.mkstemp(prefix=".s3dgs-write-check.", dir=base)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            problem = "the disk is full" if _is_enospc(exc) else (exc.strerror or str(exc))
    if problem is not None:
        where = "" if base == folder else f" ({base} is where it would be created)"
        raise WorkError(f"{option} {folder}: cannot be written{where}: {problem}. Make it writable or "
                        f"choose another {option}")
    for name in files:
        if (folder / name).is_dir():
            raise UsageError(f"{option} {folder}: {folder / name} is a folder, where this command writes a "
                             "file; move it away or choose another " + option)
    return folder


def _is_torch_write_failure(exc: BaseException) -> bool:
    """torch.save's own error when its writer fails (a full disk, a quota): a RuntimeError such as
    "PytorchStreamWriter failed writing file data/0: file write failed", without the OS's errno."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("PytorchStreamWriter" in text or "file write failed" in text)


def _disk_nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 16 * 1024**2
    except OSError:
        return False


def _is_enospc(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(exc):  # torch.save wraps the OSError in a RuntimeError
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
