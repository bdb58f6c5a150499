"""The models a probe compares: the probed checkpoint, a random network of its architecture
(one initialisation per seed), and any SOURCE (an off-the-shelf model, another export or run),
each seen through its own eval view; and every model's gain over each baseline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lejepa_cli.errors import UsageError
from lejepa_cli.probe.heads import METRICS

RANDOM = "random"
MAIN = "checkpoint"


@dataclass
class ProbedModel:
    """One model the probe runs: its row name, the seeds it is probed with, its encoder."""

    name: str  # "checkpoint", "random", or "baseline-N" for the N-th SOURCE given
    seeds: list[int]
    encoder: Any
    label: str  # how the table names it
    source: str | None = None  # the --baseline value it came from

    @property
    def key(self) -> str:
        """Its features' key: one per random initialisation, one for any other model."""
        return f"{self.name}-{self.seeds[0]}" if self.name == RANDOM else self.name

    @property
    def stage(self) -> str:
        if self.name == MAIN:
            return "features"
        if self.name == RANDOM:
            return f"random-init features (seed {self.seeds[0]})"
        return f"{self.label} features"


def baseline_list(baseline: str | Sequence[str] | None) -> list[str]:
    """--baseline values in order, each once; a UsageError for an empty one or a repeat."""
    items = [baseline] if isinstance(baseline, str) else list(baseline or [])
    for item in items:
        if not str(item).strip():
            raise UsageError("--baseline takes 'random' or a SOURCE (a timm name, export, run)")
    repeated = next((b for i, b in enumerate(items) if b in items[:i]), None)
    if repeated is not None:
        raise UsageError(f"--baseline {repeated} is given twice; give each baseline once")
    return [str(b) for b in items]


def _label(source: str, taken: set[str]) -> str:
    """A short, unique row name: the timm name, or the folder or file name."""
    label = source if not Path(source).exists() else Path(source).resolve().name
    label = label.removeprefix("local-dir:")
    base, n = label, 2
    while label in taken:
        label, n = f"{base} ({n})", n + 1
    return label


def build_models(
    encoder, baselines: list[str], seeds: int, calibrate, main_label: str
) -> list[ProbedModel]:
    """The checkpoint with every seed; a random baseline as one initialisation per seed (its
    spread then includes the draw of the weights, which moves a random network's probe by
    points); each SOURCE once, probed with every seed. `calibrate(encoder)` sets a random
    network's BatchNorm statistics from the probe's training images."""
    from lejepa_cli.artifacts import random_encoder
    from lejepa_cli.pretrained import load_encoder

    models = [ProbedModel(MAIN, list(range(seeds)), encoder, main_label)]
    taken = {main_label, "random init"}
    for i, source in enumerate(baselines):
        if source == RANDOM:
            for seed in range(seeds):
                random_init = random_encoder(encoder, seed=seed)
                calibrate(random_init)
                models.append(ProbedModel(RANDOM, [seed], random_init, "random init", source))
            continue
        other = load_encoder(source, "last", like=encoder)
        label = _label(source, taken)
        taken.add(label)
        models.append(ProbedModel(f"baseline-{i + 1}", list(range(seeds)), other, label, source))
    return models


def baseline_records(
    models: list[ProbedModel], baselines: list[str], seeds: int, norm_stats_images: int
) -> list[dict[str, Any]]:
    """probe.json's description of each baseline, with the eval view it was probed with."""
    records = []
    for source in baselines:
        if source == RANDOM:
            first = next(m for m in models if m.name == RANDOM)
            records.append(
                {
                    "name": RANDOM,
                    "label": first.label,
                    "kind": RANDOM,
                    "seeds": list(range(seeds)),
                    "arch": first.encoder.arch,
                    "norm_stats_images": norm_stats_images,
                    "eval_view": {**_view(first.encoder), "from": "probed model"},
                }
            )
            continue
        model = next(m for m in models if m.source == source)
        src = model.encoder.source
        records.append(
            {
                "name": model.name,
                "label": model.label,
                "kind": src.get("kind"),
                "source": source,
                "arch": model.encoder.arch,
                "checkpoint": src.get("checkpoint"),
                "sha256": model.encoder.fingerprint,
                "eval_view": {
                    **_view(model.encoder),
                    "from": src.get("eval_view_from", "recorded"),
                },
            }
        )
    return records


def _view(encoder) -> dict[str, Any]:
    return encoder.spec.to_dict()


def gains(rows: list[dict[str, Any]], baseline_names: list[str]) -> list[dict[str, Any]]:
    """Every model's mean score minus each baseline's, per head and shots (points of 0-1)."""
    by_key = {(r["model"], r["head"], r["shots"]): r for r in rows}
    out = []
    for r in rows:
        for b in baseline_names:
            if b == r["model"] or (b, r["head"], r["shots"]) not in by_key:
                continue
            base = by_key[(b, r["head"], r["shots"])]
            out.append(
                {
                    "model": r["model"],
                    "name": r["name"],
                    "baseline": b,
                    "baseline_name": base["name"],
                    "head": r["head"],
                    "shots": r["shots"],
                    **{m: r[m]["mean"] - base[m]["mean"] for m in METRICS},
                }
            )
    return out


def view_notes(records: list[dict[str, Any]]) -> list[str]:
    """One note per SOURCE baseline: the eval view it was probed with, and where it came from."""
    notes = []
    for r in records:
        if r["kind"] == RANDOM:
            continue
        v = r["eval_view"]
        mean = ", ".join(f"{x:.3g}" for x in v["mean"])
        std = ", ".join(f"{x:.3g}" for x in v["std"])
        notes.append(
            f"{r['label']} was probed with its own eval view ({v['from']}): {v['input_size']} px, "
            f"crop_pct {v['crop_pct']}, {v['interpolation']}, mean ({mean}), std ({std})"
        )
    return notes
