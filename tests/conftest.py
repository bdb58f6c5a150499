"""Shared fixtures: tiny generated images, so the suite needs no downloads."""

from __future__ import annotations

import os

import pytest

# Two cores on CI: keep torch from oversubscribing when several tests spawn processes.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    torch.set_num_threads(2)
    yield
