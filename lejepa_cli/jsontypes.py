"""Type checks of values read from JSON files (meta.json, selection.jsonl, config.json...):
a bool is not a number, and a float is not a whole number, whatever Python's isinstance says."""

from __future__ import annotations

import math
from typing import Any


def is_number(value: Any) -> bool:
    """A JSON number (int or float, not a bool): how metadata readers check a field."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A JSON number that is neither NaN nor infinite."""
    return is_number(value) and math.isfinite(value)


def is_whole_number(value: Any) -> bool:
    """A JSON integer (not a bool, not a float)."""
    return isinstance(value, int) and not isinstance(value, bool)
