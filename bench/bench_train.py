"""Training-step overhead of the engine, and end-to-end images/s with real JPEG decoding.

Part 1 runs the engine's `TrainStep` and a bare hand-written loop (same model, same synthetic
uint8 batch, same objective, same optimiser) alternately in one process and prints steps/s and
the engine's overhead. Part 2 pretrains for a few steps on a generated JPEG folder through the
whole engine (scan, decode, multi-crop, loader, step) and prints images/s and the share of time
spent waiting for data.

    python bench/bench_train.py                 # CPU defaults (small crops)
    python bench/bench_train.py --device cuda   # GPU: 224/96 crops, bf16, bigger batch
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lejepa_cli.config import PretrainConfig
from lejepa_cli.distributed import DistInfo
from lejepa_cli.model import LeJEPAModel, build_backbone, data_spec
from lejepa_cli.objective import lejepa_loss
from lejepa_cli.train import pretrain
from lejepa_cli.training.optim import Schedule, build_optimizer
from lejepa_cli.training.step import TrainStep


def synthetic_batch(cfg: PretrainConfig, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, gs, ls = cfg.batch_size, int(cfg.global_size), int(cfg.local_size)
    glob = torch.randint(0, 256, (cfg.global_views, b, 3, gs, gs), generator=g, dtype=torch.uint8)
    loc = torch.randint(0, 256, (cfg.local_views, b, 3, ls, ls), generator=g, dtype=torch.uint8)
    return glob, loc


def bare_loop(model: LeJEPAModel, cfg: PretrainConfig, device: torch.device, spec):
    """The training step as one would write it by hand, for comparison."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=float(cfg.weight_decay))
    mean = torch.tensor(spec.mean, device=device).view(1, 1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 1, 3, 1, 1)
    bf16 = device.type == "cuda"

    def step(glob, loc, i):
        g = (glob.to(device, non_blocking=True).float() / 255 - mean) / std
        lo = (loc.to(device, non_blocking=True).float() / 255 - mean) / std
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            gz, az = model(g, lo)
        out = lejepa_loss(gz.float(), az.float(), lam=cfg.lam, step=i, num_slices=cfg.num_slices)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        return float(out.loss.detach())

    return step


def time_steps(fn, batch, steps: int, start: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        fn(*batch, start + i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def part_overhead(cfg: PretrainConfig, device: torch.device, rounds: int, steps: int) -> None:
    torch.manual_seed(0)
    backbone = build_backbone(cfg.arch, int(cfg.global_size))
    spec = data_spec(backbone, int(cfg.global_size))
    engine_model = LeJEPAModel(backbone, cfg.proj_hidden, cfg.proj_dim).to(device)
    bare_model = LeJEPAModel(
        build_backbone(cfg.arch, int(cfg.global_size)), cfg.proj_hidden, cfg.proj_dim
    ).to(device)
    bare_model.load_state_dict(engine_model.state_dict())
    if device.type == "cuda":
        bare_model = bare_model.to(memory_format=torch.channels_last)
        bare_model.channels_last = True
    optimizer = build_optimizer(engine_model, cfg)
    schedule = Schedule.for_run(cfg, total_steps=10**6, steps_per_epoch=10**3)
    engine = TrainStep(engine_model, optimizer, schedule, cfg, spec, device, DistInfo())
    bare = bare_loop(bare_model, cfg, device, spec)
    batch = synthetic_batch(cfg)

    def engine_fn(g, lo, i):
        return engine(g, lo, i)

    time_steps(engine_fn, batch, 2, 0, device)  # warm-up both
    time_steps(bare, batch, 2, 0, device)
    eng, ref = [], []
    for r in range(rounds):  # alternate so that machine noise hits both alike
        eng.append(time_steps(engine_fn, batch, steps, 10 + r * steps, device))
        ref.append(time_steps(bare, batch, steps, 10 + r * steps, device))
    e, b = statistics.median(eng), statistics.median(ref)
    print(
        f"\n## Training step: engine vs bare loop ({cfg.arch}, batch {cfg.batch_size}, "
        f"{cfg.global_views}x{cfg.global_size}px + {cfg.local_views}x{cfg.local_size}px, {device})"
    )
    print(f"| loop | steps/s (median of {rounds} rounds x {steps} steps) |")
    print("|---|---|")
    print(f"| bare hand-written | {b:.3f} |")
    print(f"| lejepa engine | {e:.3f} |")
    print(f"engine overhead: {100 * (b / e - 1):+.1f}% (target: under 5%)")


def make_jpegs(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = rng.integers(256, 401, 2)
        base = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((int(w), int(h)), Image.BILINEAR)
        img.save(folder / f"img_{i:05d}.jpg", quality=90)


def part_end_to_end(cfg: PretrainConfig, images: int, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images"
        make_jpegs(data, images)
        overrides = {**cfg.to_dict(), "data": str(data), "out": str(Path(tmp) / "run")}
        overrides.update(
            max_steps=steps, epochs=max(1, -(-steps * cfg.batch_size // images)), holdout=0
        )
        t0 = time.perf_counter()
        pretrain(overrides)
        wall = time.perf_counter() - t0
        rows = [
            json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()
        ]
    tail = rows[len(rows) // 2 :]  # the second half: past start-up and worker spawn
    ips = statistics.median(r["images_per_s"] for r in tail)
    wait = statistics.median(r["data_wait"] for r in tail)
    print(
        f"\n## End to end: {images} generated JPEGs (256-400 px), {steps} steps, "
        f"{cfg.workers} workers, {cfg.device}"
    )
    print("| images/s (median, 2nd half) | data-wait share | wall (s, incl. start-up) |")
    print("|---|---|---|")
    print(f"| {ips:.1f} | {100 * wait:.0f}% | {wall:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--global-size", type=int, default=None)
    p.add_argument("--local-size", type=int, default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="steps per timed round")
    p.add_argument("--e2e-images", type=int, default=None)
    p.add_argument("--e2e-steps", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-e2e", action="store_true")
    a = p.parse_args()
    cuda = a.device.startswith("cuda")
    torch.set_num_threads(a.threads)
    cfg = PretrainConfig(
        arch=a.arch,
        batch_size=a.batch_size or (256 if cuda else 16),
        global_size=a.global_size or (224 if cuda else 96),
        local_size=a.local_size or (96 if cuda else 48),
        weight_decay=5e-4,
        warmup_epochs=0.0,
        device=a.device,
        precision="bf16" if cuda else "fp32",
        workers=a.workers if a.workers is not None else (8 if cuda else 1),
        keep_every=1000,
        holdout=0,
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {a.device}"
        + (f" ({torch.cuda.get_device_name()})" if cuda else "")
    )
    part_overhead(cfg, torch.device(a.device), a.rounds, a.steps or (20 if cuda else 3))
    if not a.skip_e2e:
        part_end_to_end(
            cfg, a.e2e_images or (2048 if cuda else 96), a.e2e_steps or (60 if cuda else 8)
        )


if __name__ == "__main__":
    main()
