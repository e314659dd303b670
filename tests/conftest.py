"""Shared fixtures. Tests are offline, deterministic and CPU-only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLES = REPO.parent / "shared" / "real-samples"


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def real_samples() -> Path:
    """``../shared/real-samples`` (real recordings + alignments); tests using it skip when it is absent."""
    if not REAL_SAMPLES.is_dir():
        pytest.skip("../shared/real-samples not present")
    return REAL_SAMPLES
