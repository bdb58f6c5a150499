"""The seams of the training package: the learning-rate schedule, the devices policy, the
callbacks a run calls with structured values, and the pretrain options generated from the
config's fields."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import typer

from lejepa_cli import devices
from lejepa_cli.cli import app
from lejepa_cli.config import PretrainConfig
from lejepa_cli.errors import UsageError
from lejepa_cli.train import pretrain
from lejepa_cli.training.callbacks import Callback, CheckpointInfo, EpochEnd, RunContext
from lejepa_cli.training.optim import Schedule
from tests.test_train import make_images

# ----------------------------------------------------------------------------- the schedule


def test_schedule_warms_up_linearly_then_follows_the_cosine_to_its_floor():
    cfg = PretrainConfig(lr=1e-2, min_lr_ratio=0.1, warmup_epochs=0.5)
    s = Schedule.for_run(cfg, total_steps=40, steps_per_epoch=8)
    assert s.warmup_steps == 4  # half an epoch of 8 steps
    assert [s.lr(i) for i in range(4)] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    assert s.lr(4) == pytest.approx(1e-2)  # the cosine starts at the peak
    middle = 4 + (40 - 4) // 2
    assert s.lr(middle) == pytest.approx(1e-3 + (1e-2 - 1e-3) * 0.5)
    assert s.lr(40) == pytest.approx(1e-3) and s.lr(100) == pytest.approx(1e-3)
    assert all(s.lr(i) >= s.lr(i + 1) for i in range(4, 45))


def test_schedule_sets_every_parameter_group():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW([{"params": [model.weight]}, {"params": [model.bias]}], lr=1.0)
    s = Schedule(total_steps=10, warmup_steps=0, peak=0.5, min_ratio=0.0)
    lr = s.apply(opt, 5)
    assert lr == pytest.approx(0.25 * (1 + math.cos(math.pi * 0.5)))
    assert [g["lr"] for g in opt.param_groups] == [lr, lr]


# ----------------------------------------------------------------------------- devices


def test_precision_auto_is_bf16_on_cuda_only_and_cpu_runs_without_autocast():
    assert devices.resolve_precision("auto", "cuda:1") == "bf16"
    assert devices.resolve_precision("auto", "cpu") == "fp32"
    assert devices.resolve_precision("fp32", "cuda") == "fp32"
    cpu = torch.device("cpu")
    with devices.autocast(cpu, "bf16"):
        assert not torch.is_autocast_enabled()
    assert devices.rank_device("cuda", 3) == torch.device("cuda", 3)
    assert devices.rank_device("cuda:1", 3) == torch.device("cuda", 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_usage_error():
    with pytest.raises(UsageError, match="no CUDA GPU is visible; use --device cpu"):
        devices.resolve_device("cuda")
    assert devices.resolve_device("auto") == torch.device("cpu")


# ----------------------------------------------------------------------------- callbacks


class Recorder(Callback):
    def __init__(self):
        self.events: list[tuple[str, object]] = []

    def on_start(self, ctx: RunContext) -> None:
        self.events.append(("start", ctx))

    def on_step(self, row, logged) -> None:
        self.events.append(("step", (row["step"], logged)))

    def on_epoch_end(self, end: EpochEnd) -> None:
        self.events.append(("epoch", end))

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        self.events.append(("checkpoint", info))

    def on_score(self, name, step, scores) -> None:
        self.events.append(("score", (name, step, scores)))

    def on_end(self, step, reason) -> None:
        self.events.append(("end", (step, reason)))

    def of(self, kind: str) -> list:
        return [value for k, value in self.events if k == kind]


def test_a_run_tells_its_callbacks_structured_values_in_order(tmp_path):
    data = make_images(tmp_path / "images", n=20)
    rec = Recorder()
    overrides = dict(
        data=str(data), out=str(tmp_path / "run"), arch="test_resnet", epochs=3, batch_size=8,
        global_size=32, local_size=16, local_views=2, num_slices=64, proj_hidden=64, proj_dim=32,
        workers=0, holdout=4, keep_every=2, log_every=2,
    )  # fmt: skip
    result = pretrain(overrides, callbacks=[rec])
    kinds = [k for k, _ in rec.events if k not in ("step",)]
    assert kinds == [
        "start", "epoch", "checkpoint", "epoch", "checkpoint", "score",
        "epoch", "checkpoint", "score", "end",
    ]  # fmt: skip
    (ctx,) = rec.of("start")
    assert (ctx.start_step, ctx.total_steps, ctx.steps_per_epoch) == (0, 6, 2)
    assert ctx.config["keep_every"] == 2 and ctx.is_main and not ctx.resumed
    assert rec.of("step") == [(1, False), (2, True), (3, False), (4, True), (5, False), (6, True)]
    assert [(e.epochs_done, e.step, e.complete) for e in rec.of("epoch")] == [
        (1, 2, True), (2, 4, True), (3, 6, True),
    ]  # fmt: skip
    infos = rec.of("checkpoint")
    assert [(i.name, i.step, i.epoch, i.kept) for i in infos] == [
        ("epoch-0001", 2, 1, False), ("epoch-0002", 4, 2, True), ("epoch-0003", 6, 3, True),
    ]  # fmt: skip
    assert set(infos[0].train) == {"loss", "pred", "sigreg"}
    assert infos[-1].path == result.checkpoint and infos[-1].path.is_dir()
    assert not infos[0].path.exists()  # not kept: dropped once the next one was written
    scores = rec.of("score")
    assert [(name, step) for name, step, _ in scores] == [("epoch-0002", 4), ("epoch-0003", 6)]
    assert all(isinstance(s["loss"], float) and s["checkpoint"] == n for n, _, s in scores)
    assert rec.of("end") == [(6, "finished")]


def test_a_stop_inside_an_epoch_ends_it_short_with_a_step_checkpoint(tmp_path):
    data = make_images(tmp_path / "images", n=20)
    rec = Recorder()
    overrides = dict(
        data=str(data), out=str(tmp_path / "run"), arch="test_resnet", epochs=2, batch_size=4,
        global_size=32, local_size=16, local_views=2, num_slices=64, proj_hidden=64, proj_dim=32,
        workers=0, holdout=4, max_steps=3,
    )  # fmt: skip
    result = pretrain(overrides, callbacks=[rec])
    (end,) = rec.of("epoch")
    assert (end.epochs_done, end.step, end.complete) == (0, 3, False)
    (info,) = rec.of("checkpoint")
    assert (info.name, info.kept) == ("step-0000003", False)
    assert rec.of("end") == [(3, "max_steps")] and not result.finished


# ----------------------------------------------------------------------------- the CLI


def _pretrain_command():
    return typer.main.get_command(app).commands["pretrain"]


def test_every_config_flag_is_a_pretrain_option_with_the_fields_help():
    params = {p.name: p for p in _pretrain_command().params}
    flagged = [f for f in dataclasses.fields(PretrainConfig) if "help" in f.metadata]
    assert [p for p in params if p in {f.name for f in flagged}] == [f.name for f in flagged]
    assert set(params) - {f.name for f in flagged} == {
        "config_file", "resume", "overwrite", "force", "quiet",
    }  # fmt: skip
    for f in flagged:
        assert params[f.name].help == f.metadata["help"], f.name
        assert params[f.name].default is None, f.name  # unset flags never override run.yaml
    assert {f.name for f in dataclasses.fields(PretrainConfig)} - set(params) == {
        "min_lr_ratio", "version",  # run.yaml only, and the writer's version
        "pixels", "init_sha256", "init_tensors",  # written by the run, never given
    }  # fmt: skip


def test_generated_options_reach_the_config_with_their_types(tmp_path, monkeypatch):
    seen = {}

    def fake(overrides, **kwargs):
        seen.update(overrides)
        raise SystemExit(0)

    monkeypatch.setattr("lejepa_cli.train.pretrain", fake)
    from typer.testing import CliRunner

    args = [
        str(tmp_path), "-o", str(tmp_path / "run"), "--epochs", "3", "--lr", "0.01",
        "--global-size", "auto", "--augment", "blur_p=0", "--augment", "hflip_p=0",
        "--log-to", "tensorboard", "--no-compile", "--labels", str(tmp_path / "l.csv"),
    ]  # fmt: skip
    result = CliRunner().invoke(app, ["pretrain", *args])
    assert result.exit_code == 0, result.output
    assert seen == {
        "data": str(tmp_path), "out": str(tmp_path / "run"), "epochs": 3, "lr": 0.01,
        "global_size": "auto", "augment": ["blur_p=0", "hflip_p=0"], "log_to": ["tensorboard"],
        "compile": False, "labels": str(Path(tmp_path / "l.csv")),
    }  # fmt: skip
