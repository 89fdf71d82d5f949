"""The one root of every error s3dgs raises for a user to read.

Every error that a user can cause or fix (a bad file, a bad option, a run folder in the way, work
that failed) derives from :class:`S3dgsError`. The command line catches it once, in
``s3dgs.cli.main``, prints its message (which names the file or the option and the fix) and exits
with its ``exit_code``; anything else is a bug and keeps its traceback. ``--debug`` (or
``S3DGS_DEBUG=1``) shows the traceback of an ``S3dgsError`` too, for bug reports.

Exit codes follow the usual convention: 2 for usage errors (an option or argument is wrong), 1 for
work that failed, 130 for an interruption.
"""

from __future__ import annotations

__all__ = ["S3dgsError", "SceneError", "UsageError", "WorkError"]


class S3dgsError(Exception):
    """Base of every s3dgs error meant for a user. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1


class UsageError(S3dgsError, ValueError):
    """An option or argument is wrong (out of range, not finite, unavailable); exit status 2."""

    exit_code = 2


class WorkError(S3dgsError, RuntimeError):
    """Work that was asked for could not be done (a file could not be written, a stage failed)."""


class SceneError(S3dgsError, ValueError):
    """An input file is missing or malformed. The message names the file and the fix. (Defined
    here, the bottom of the import table, so that every layer that reads a file can raise it;
    `s3dgs.scene.colmap` re-exports it.)"""
