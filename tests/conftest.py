"""Shared fixtures: tiny generated images, so the suite needs no downloads."""

from __future__ import annotations

import os

import pytest

# Two cores on CI: keep torch from oversubscribing when several tests spawn processes.
os.environ.setdefault("OMP_NUM_THREADS", "2")
# A bug inside model selection must fail the tests, not just be logged (as it is for users).
os.environ.setdefault("LEJEPA_STRICT_SELECTION", "1")


@pytest.fixture(autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.set_num_threads(2)
    yield
