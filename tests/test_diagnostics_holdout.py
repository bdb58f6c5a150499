"""Dimensional collapse is judged only on enough held-out images to show it."""

from __future__ import annotations

import numpy as np

from lejepa_cli import diagnostics


def test_four_held_out_images_are_too_few_to_judge_dimensional_collapse():
    rng = np.random.default_rng(0)
    # 4 images of 512 dims, mostly along one direction: effective rank below 2, yet 4 images
    # span at most 3 directions whatever the model is.
    x = rng.normal(size=(4, 1)) @ rng.normal(size=(1, 512)) + 0.05 * rng.normal(size=(4, 512))
    assert diagnostics.effective_rank(x) < 2
    summary = diagnostics.summarize(x)
    assert not summary["collapsed"]
    assert summary["warnings"] == []
    (note,) = summary["notes"]
    assert "too small to judge" in note
    assert "4 images" in note and "--holdout" in note and "65" in note


def test_a_constant_output_is_collapse_on_any_holdout():
    x = np.tile(np.arange(512.0), (4, 1))
    summary = diagnostics.summarize(x + 1e-12)
    assert summary["collapsed"] and "constant across images" in summary["warnings"][0]


def test_the_same_spectrum_on_enough_images_is_dimensional_collapse():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 1)) @ rng.normal(size=(1, 512)) + 1e-3 * rng.normal(size=(200, 512))
    summary = diagnostics.summarize(x)
    assert summary["collapsed"] and "dimensional collapse" in summary["warnings"][0]
    assert summary["notes"] == []
