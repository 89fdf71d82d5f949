"""The native CPU extension: C++/OpenMP kernels compiled on first use and cached.

Every ``s3dgs/csrc/*.cpp`` is one part of one extension, ``torch.ops.s3dgs_native``: the rasteriser
(:mod:`s3dgs.render.native`), and whatever other hot path a profile points to. Each source registers
its ops with ``TORCH_LIBRARY_FRAGMENT(s3dgs_native, m)`` (one of them with ``TORCH_LIBRARY``).

Build route: :func:`torch.utils.cpp_extension.load` on first use, as gsplat compiles its CUDA
kernels, into torch's extension cache under a name that carries a hash of the sources, the flags
and the torch version, so an edited source or another torch builds afresh and a cached build loads
without invoking the compiler. The ops are registered with ``TORCH_LIBRARY`` and called as
``torch.ops.s3dgs_native.*``; the sources include only light ATen headers, not
``<torch/extension.h>`` (pybind11), which measured 16 s instead of 60 s for a minimal op.
Flags: ``-O3 -fopenmp``; ``-ffp-contract=off`` so that a forward and its backward compute every
value to the same bit (the rasteriser's must agree on which Gaussians were blended); no
``-ffast-math`` (NaN and inf semantics); no ``-march=native`` (a cached binary may move to another
machine): on x86-64 the hot kernels are compiled for AVX2 and for the baseline and the loader picks
one at run time (GCC ``target_clones``).

Without a compiler, when the build fails, or with ``S3DGS_NO_NATIVE=1`` in the environment,
:func:`native_available` is False and every caller uses its plain-torch path (the readable
reference); the reason is logged once (the full build log at debug level).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

import torch

__all__ = ["CFLAGS", "ENV_OFF", "SOURCES", "native_available", "native_unavailable_reason"]

logger = logging.getLogger("s3dgs.native")

SOURCE_DIR = Path(__file__).with_name("csrc")
SOURCES = sorted(SOURCE_DIR.glob("*.cpp"))
CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-Wno-psabi"]
LDFLAGS = ["-fopenmp"]
ENV_OFF = "S3DGS_NO_NATIVE"

_lock = threading.Lock()
_state: dict = {"ok": None, "reason": None}


def _build() -> None:
    """Compile (or load the cached build of) the extension; raises on any failure."""
    from torch.utils import cpp_extension

    h = hashlib.sha256(repr((CFLAGS, LDFLAGS, torch.__version__)).encode())
    for src in SOURCES:
        h.update(src.name.encode() + src.read_bytes())
    name = f"s3dgs_native_{h.hexdigest()[:12]}"
    build_dir = Path(cpp_extension.get_default_build_root()) / name
    lib = build_dir / f"{name}.so"
    if lib.is_file():
        try:
            torch.ops.load_library(str(lib))
            return
        except OSError:  # e.g. half written by a concurrent build: let torch's locked build decide
            pass
    build_dir.mkdir(parents=True, exist_ok=True)
    logger.warning("s3dgs: compiling the native CPU kernels (once, about 30 s) ...")
    cpp_extension.load(
        name=name, sources=[str(s) for s in SOURCES], extra_cflags=CFLAGS, extra_ldflags=LDFLAGS,
        build_directory=str(build_dir), is_python_module=False, verbose=False,
    )


def _load() -> None:
    """What :func:`native_available` calls once; tests monkeypatch it to simulate a failed build."""
    _build()


def native_available() -> bool:
    """True when the native extension is built and loaded (tried once per process; the reason for a
    failure is logged once and kept in :func:`native_unavailable_reason`)."""
    if _state["ok"] is None:
        with _lock:
            if _state["ok"] is None:
                reason = None
                if os.environ.get(ENV_OFF, "") not in ("", "0"):
                    reason = f"{ENV_OFF}={os.environ[ENV_OFF]} is set"
                else:
                    try:
                        _load()
                    except Exception as e:  # noqa: BLE001 - no compiler, failed build, missing ninja, ...
                        logger.debug("s3dgs: building the native CPU kernels failed", exc_info=True)
                        first = (str(e).strip().splitlines() or [""])[0]
                        if len(first) > 300:
                            first = first[:300] + " ..."
                        reason = f"{type(e).__name__}: {first}".strip()
                if reason is not None:
                    logger.warning("s3dgs: native CPU kernels unavailable (%s); using the torch code", reason)
                _state["reason"] = reason
                _state["ok"] = reason is None
    return bool(_state["ok"])


def native_unavailable_reason() -> str | None:
    """Why the native extension is unavailable (None when it is, or when not tried yet)."""
    return _state["reason"]
