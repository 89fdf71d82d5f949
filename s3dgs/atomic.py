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
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s3dgs.errors import WorkError

__all__ = ["atomic_write", "atomic_write_text", "atomic_torch_save"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write_fn: Callable[[str], Any]) -> Path:
    """Call ``write_fn(tmp_path)`` to write a temporary file beside ``path``, then rename it to
    ``path``. Returns ``path``. Raises WorkError (naming ``path``) when the write fails with an
    OS error such as a full disk; the temporary file is removed in every case."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
        if isinstance(exc, OSError) or isinstance(exc.__cause__, OSError) or _is_enospc(exc):
            reason = "the disk is full" if _is_enospc(exc) else str(exc)
            raise WorkError(f"{path}: could not be written ({reason}); the previous file, if any, "
                            "is unchanged. Free some space or choose another folder.") from exc
        raise
    return path


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
