"""Labels CSVs (`path,label`), the --shots list, the validation split and few-shot draws."""

from __future__ import annotations

import collections
import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lejepa_cli.errors import DataError, UsageError

ALL = "all"

VAL_FRACTION = 0.2  # share of each class held out when no --val is given

SPLIT_SEED = 0  # the validation split never changes between runs


def _sort_classes(labels: Sequence[str]) -> list[str]:
    unique = set(labels)
    try:  # integer labels sort as numbers (2 before 10)
        return sorted(unique, key=lambda s: (int(s), s))
    except ValueError:
        return sorted(unique)


def read_labels(
    csv_path: str | Path, root: str | Path | None = None, root_flag: str | None = "--root"
) -> tuple[list[str], list[str]]:
    """(absolute image paths, labels) from a CSV with header `path,label`.

    Paths are relative to `root` when given, else to the CSV's folder; absolute paths are kept.
    `root_flag` is the option that sets `root` in the calling command (None: it has none).
    """
    csv_path = Path(csv_path)
    header, rows = _csv_rows(csv_path, _csv_text(csv_path))
    base = Path(root) if root is not None else csv_path.parent
    paths, labels = _path_label_pairs(csv_path, header, rows, base)
    _check_paths(csv_path, paths, base, root, root_flag)
    return paths, labels


def _csv_text(csv_path: Path) -> str:
    """The CSV's text, or a DataError saying why it cannot be read."""
    if csv_path.is_dir():
        raise DataError(f"labels {csv_path} is a folder; pass the CSV file (path,label) in it")
    if not csv_path.is_file():
        if csv_path.is_symlink():
            raise DataError(
                f"labels file {csv_path} is a broken symbolic link (or a link loop); point "
                "it at the CSV file"
            )
        raise DataError(f"labels file not found: {csv_path}; check the path")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {csv_path} as CSV ({exc}); save it as UTF-8 text") from None
    if "\0" in text:  # no path can hold one; a file full of them is UTF-16 or binary
        line = text.count("\n", 0, text.index("\0")) + 1
        raise DataError(
            f"{csv_path} line {line} contains a NUL byte, which no path or label can hold; "
            "remove it (or, if the file was saved as UTF-16, save it as UTF-8 text)"
        )
    return text


def _csv_rows(csv_path: Path, text: str) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """(header, [(line the row starts on, cells)]), or a DataError naming the broken line."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, line = [], 1
    try:
        header = next(reader, None)
        line = reader.line_num + 1
        for row in reader:
            rows.append((line, row))
            line = reader.line_num + 1
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise DataError(
                f"{csv_path} line {line}: a field runs past {csv.field_size_limit()} characters; "
                'close or remove a stray double quote (") there, or shorten the path or label'
            ) from None
        raise DataError(f"{csv_path} line {line}: {exc}; fix that row") from None
    return header, rows


def _path_label_pairs(
    csv_path: Path, header: list[str] | None, rows, base: Path
) -> tuple[list[str], list[str]]:
    """(resolved paths, labels) of the rows, duplicates merged; blank rows are skipped."""
    names = [h.strip().lower() for h in header or []]
    if "path" not in names or "label" not in names:
        found = ", ".join(h.strip() for h in header or []) or "nothing"
        raise DataError(
            f"{csv_path} needs a header row with the columns path,label (found: {found}); "
            "add the line `path,label` at the top"
        )
    ip, il = names.index("path"), names.index("label")
    paths, labels, seen = [], [], {}
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(ip, il) or not row[ip].strip() or not row[il].strip():
            raise DataError(f"{csv_path} line {line}: needs both a path and a label")
        rel, label = row[ip].strip(), row[il].strip()
        # realpath, not Path.resolve: a symlink loop stays a path that is reported missing
        # later, where resolve() raises RuntimeError.
        path = os.path.realpath(base / rel)
        if path in seen:
            if seen[path] != label:
                raise DataError(
                    f"{csv_path} line {line}: {rel} appears twice with labels "
                    f"'{seen[path]}' and '{label}'; keep one"
                )
            continue
        seen[path] = label
        paths.append(path)
        labels.append(label)
    if not paths:
        raise DataError(f"{csv_path} has a header but no rows; add one `path,label` row per image")
    return paths, labels


def _check_paths(csv_path: Path, paths: list[str], base: Path, root, root_flag: str | None) -> None:
    """A DataError when a path is a folder or names no file."""
    folders = [p for p in paths if Path(p).is_dir()]
    if folders:
        shown = ", ".join(folders[:3]) + (
            f" and {len(folders) - 3} more" if len(folders) > 3 else ""
        )
        raise DataError(
            f"{len(folders)} paths in {csv_path} are folders, not images: {shown}; list one "
            "image file per row"
        )
    missing = [p for p in paths if not Path(p).is_file()]
    if not missing:
        return
    shown = ", ".join(
        str(Path(p).relative_to(base.resolve())) if _under(p, base) else p for p in missing[:3]
    )
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    if root_flag is None:
        fix = "fix the paths (they are read relative to the CSV's folder)"
    elif root is not None:
        fix = f"fix the paths or point {root_flag} at the image folder"
    else:
        fix = (
            f"fix the paths or point {root_flag} at the image folder (paths are read "
            "relative to the CSV's folder)"
        )
    raise DataError(
        f"{len(missing)} of {len(paths)} paths in {csv_path} do not exist under {base}: "
        f"{shown}{more}; {fix}"
    )


def _under(path: str, base: Path) -> bool:
    try:
        Path(path).relative_to(base.resolve())
        return True
    except ValueError:
        return False


def parse_shots(shots: str | Sequence[str | int]) -> list[int | str]:
    """'1,10,all' -> [1, 10, 'all'] (deduplicated, in the given order)."""
    items = shots.split(",") if isinstance(shots, str) else list(shots)
    out: list[int | str] = []
    for item in items:
        text = str(item).strip().lower()
        if not text:
            continue
        if text == ALL:
            value: int | str = ALL
        elif text.isascii() and text.isdigit() and int(text) >= 1:
            value = int(text)
        else:
            raise UsageError(
                f"--shots takes positive integers and 'all', comma separated (e.g. 1,10,all), not {item!r}"
            )
        if value not in out:
            out.append(value)
    if not out:
        raise UsageError("--shots is empty; pass e.g. 1,10,all")
    return out


def stratified_split(
    y: np.ndarray, fraction: float, seed: int, classes: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices): `fraction` of each class (at least 1) held out."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < 2:
            name = classes[c] if classes is not None else str(c)
            raise DataError(
                f"class '{name}' has only 1 labeled example; a validation split needs at least 2 "
                "per class: add examples or pass --val with a separate validation CSV"
            )
        idx = rng.permutation(idx)
        n_val = min(len(idx) - 1, max(1, round(fraction * len(idx))))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def sample_shots(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k indices per class (all of a class that has fewer), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        picked.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
    return np.sort(np.concatenate(picked))


def _encode(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[lab] for lab in labels], dtype=np.int64)


def check_labels(labels_csv: str | Path) -> tuple[list[str], list[str], list[str]]:
    """(paths, labels, sorted classes) of the labels CSV that `lejepa pretrain --labels` probes
    every kept checkpoint with: readable, paths present, at least two classes, and at least two
    examples of each (the probe holds out a share of every class). Pretraining calls this before
    its first step, so a bad file fails in a second, not after the whole run."""
    paths, labels = read_labels(labels_csv, root_flag=None)
    classes = _sort_classes(labels)
    if len(classes) < 2:
        raise DataError(
            f"{labels_csv} has a single class ('{classes[0]}'); a probe needs at least two"
        )
    counts = collections.Counter(labels)
    single = [c for c in classes if counts[c] < 2]
    if single:
        raise DataError(
            f"class '{single[0]}' has only 1 labeled example in {labels_csv}"
            + (f" ({len(single)} classes do)" if len(single) > 1 else "")
            + "; the report's probe holds out part of every class, so give each class at "
            "least 2 examples or drop that class"
        )
    return paths, labels, classes
