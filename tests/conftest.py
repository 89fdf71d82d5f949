"""Shared fixtures. Tests never reach a model hub: HF_HUB_OFFLINE is set for the whole suite."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

FERN = Path(__file__).resolve().parents[2] / "shared" / "data" / "llff_fern"


@pytest.fixture
def fern_dir() -> Path:
    """The real fern scene beside the project (skips when absent: users do not have it)."""
    if not (FERN / "sparse" / "0").is_dir():
        pytest.skip("../shared/data/llff_fern not present")
    return FERN
