"""Shared fixtures. Tests never reach a model hub: HF_HUB_OFFLINE is set for the whole suite."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported; see s3dgs/__init__.py
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread: the tensors in tests are tiny, and several torch processes on a 2-core
# machine with a thread each per core spin against each other (measured: 15x slower steps).
torch.set_num_threads(1)

FERN = Path(__file__).resolve().parents[2] / "shared" / "data" / "llff_fern"


@pytest.fixture
def fern_dir() -> Path:
    """The real fern scene beside the project (skips when absent: users do not have it)."""
    if not (FERN / "sparse" / "0").is_dir():
        pytest.skip("../shared/data/llff_fern not present")
    return FERN


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory) -> Path:
    """The fastest synthetic plant preset, built once per test session."""
    from s3dgs.scene.synth import SynthConfig, make_synthetic_scene

    out = tmp_path_factory.mktemp("tiny") / "scene"
    make_synthetic_scene(SynthConfig(out=out, preset="tiny", seed=0))
    return out


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
