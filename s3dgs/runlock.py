"""One s3dgs command per run folder at a time: ``with run_lock(folder, "train"): ...``.

Two commands writing into one folder at once (two ``s3dgs train --out R``, an ``s3dgs eval R``
while ``s3dgs run`` trains into it) would leave one run's model beside the other's config and an
interleaved log. Every command that writes into a run folder (train, eval, export, phenotype, the
report, and ``s3dgs run`` / ``s3dgs demo`` on their OUT folder) holds that folder's lock
``FOLDER/.lock`` for as long as it works; a second command on the same folder stops at once with
one line (:class:`RunFolderBusy`, exit status 1) naming the folder, the holder (its PID, host,
command and start time, read from the sidecar ``FOLDER/.lock.json`` the holder writes) and what to
do.

The lock is an OS lock (``flock`` through the ``filelock`` library): it is released when its
process ends, however it ends (killed, crashed, machine restarted), so a stale lock never blocks
and no lock file ever needs removing by hand. The sidecar is only information: a leftover one
from a killed holder is overwritten by the next.

Within one process the lock is re-entrant per folder (one lock object per folder per process, with
a depth count): ``s3dgs run`` holds OUT and OUT/run for the whole chain, and the training it calls
takes OUT/run again without waiting on itself.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from s3dgs.atomic import atomic_write_text
from s3dgs.errors import UsageError, WorkError

__all__ = ["HOLDER_NAME", "LOCK_NAME", "RunFolderBusy", "held_folders", "lock_holder", "run_lock"]

LOCK_NAME = ".lock"
"""The lock file inside the folder."""
HOLDER_NAME = ".lock.json"
"""The sidecar naming the holder: {"pid", "host", "command", "what", "since"}."""


class RunFolderBusy(WorkError):
    """Another s3dgs command is writing into the folder; the message names it and what to do."""


# resolved folder -> [FileLock, depth]; one lock object per folder per process
_held: dict[str, list] = {}
_guard = threading.Lock()


def held_folders() -> list[Path]:
    """The folders this process holds the lock of (for tests and messages)."""
    with _guard:
        return [Path(k) for k in _held]


def lock_holder(folder: str | Path) -> dict | None:
    """What the sidecar of ``folder`` says about the lock's holder, or None when there is none or
    it cannot be read."""
    try:
        data = json.loads((Path(folder) / HOLDER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith(("cli.py", "__main__.py")):
        argv[0] = "s3dgs"
    elif argv:
        argv[0] = Path(argv[0]).name
    return " ".join(argv)


def _busy_message(folder: Path, what: str) -> str:
    h = lock_holder(folder)
    if h:
        who = (f"{h.get('what', 'an s3dgs command')} (PID {h.get('pid', '?')} on {h.get('host', '?')}, "
               f"since {h.get('since', '?')}: `{h.get('command', '?')}`)")
    else:
        who = "another s3dgs command (it has not said which yet)"
    return (f"{folder}: in use by {who}; {what} cannot write into it at the same time. Wait for that "
            "command to finish (or stop it), or choose another folder; the lock is released as soon as "
            f"its process ends, even if it is killed, so {folder / LOCK_NAME} never needs removing by hand.")


def _acquire(folder: Path, what: str):
    from filelock import FileLock, Timeout

    lock = FileLock(str(folder / LOCK_NAME), thread_local=False)
    for attempt in range(3):
        try:
            lock.acquire(timeout=0)
            return lock
        except Timeout:
            raise RunFolderBusy(_busy_message(folder, what)) from None
        except FileNotFoundError:  # the folder was removed under us (an empty one given back): make it again
            if attempt == 2:
                raise
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkError(f"{folder / LOCK_NAME}: cannot take the run folder's lock ({exc}); check that "
                            "the folder is writable") from None
    raise AssertionError("unreachable")


@contextmanager
def run_lock(folder: str | Path, what: str, *, create: bool = True) -> Iterator[Path]:
    """Hold the lock of ``folder`` for the ``with`` block; yields the folder.

    ``what`` names the command in the holder's sidecar and in a refusal ("s3dgs train", ...).
    ``create``: make the folder when it does not exist (train, run); with False a missing folder
    is not locked (the command itself then says that the folder is missing). A folder made here and
    left empty is removed again on leaving. Raises :class:`RunFolderBusy` (exit 1) at once when
    another process holds the lock, UsageError when ``folder`` is a file."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: exists and is not a folder; choose a folder for the run")
    if not folder.exists() and not create:
        yield folder
        return
    created = not folder.exists()
    if created:
        folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            try:
                lock = _acquire(folder, what)
            except BaseException:
                if created:
                    _remove_if_empty(folder)
                raise
            entry = _held[key] = [lock, 1]
            try:
                atomic_write_text(folder / HOLDER_NAME, json.dumps({
                    "pid": os.getpid(), "host": socket.gethostname(), "what": what,
                    "command": _command_line(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
            except BaseException:
                del _held[key]
                lock.release()
                raise
    try:
        yield folder
    finally:
        with _guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                # the sidecar goes first, while the lock is still held: the next holder's stays
                try:
                    (folder / HOLDER_NAME).unlink()
                except OSError:
                    pass
                entry[0].release()
                if created:
                    _remove_if_empty(folder)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
