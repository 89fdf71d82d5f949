"""Depth Anything V2 priors: generation (local transformers model or the gradio Space) and PNG I/O.

Public API (imported lazily, so `s3dgs.depth.io` stays light):
    generate_depth(images_dir, out_dir, backend=..., ...) -> DepthSummary
    verify_depths(depth_dir, images_dir=None, num_samples=0) -> VerifyReport
    check_space(space, image=None) -> int
    TransformersBackend, GradioBackend
"""

_LAZY = {
    "generate_depth": "s3dgs.depth.generate",
    "verify_depths": "s3dgs.depth.generate",
    "check_space": "s3dgs.depth.generate",
    "DepthSummary": "s3dgs.depth.generate",
    "VerifyReport": "s3dgs.depth.generate",
    "DepthError": "s3dgs.depth.generate",
    "TransformersBackend": "s3dgs.depth.backends",
    "GradioBackend": "s3dgs.depth.backends",
    "DepthBackendError": "s3dgs.depth.backends",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 's3dgs.depth' has no attribute {name!r}")
