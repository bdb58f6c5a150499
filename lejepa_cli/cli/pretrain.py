"""`lejepa pretrain`: flags -> config overrides -> one call into the engine."""

from __future__ import annotations

from pathlib import Path

import typer

from lejepa_cli.cli.base import app, checkpoint_flag


@app.command(no_args_is_help=True)
def pretrain(
    data: Path | None = typer.Argument(
        None,
        metavar="DATA",
        help="Folder of images (searched recursively). Optional with --resume.",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory to write."),
    arch: str | None = typer.Option(None, help="Any timm architecture.", show_default="resnet18"),
    epochs: int | None = typer.Option(None, help="Passes over the data.", show_default="100"),
    batch_size: int | None = typer.Option(
        None, help="Global batch size, split across processes.", show_default="128"
    ),
    lr: float | None = typer.Option(None, help="Peak learning rate of AdamW.", show_default="5e-4"),
    weight_decay: str | None = typer.Option(
        None, help="AdamW weight decay; auto: 5e-2 for attention models, 5e-4 for CNNs."
    ),
    warmup_epochs: str | None = typer.Option(
        None, help="Linear warmup length in epochs; auto: min(10, 10% of epochs)."
    ),
    lam: float | None = typer.Option(
        None, help="SIGReg weight lambda: loss = (1-lam)*pred + lam*sigreg.", show_default="0.05"
    ),
    num_slices: int | None = typer.Option(
        None, help="Random 1-D directions for SIGReg per step.", show_default="1024"
    ),
    proj_dim: int | None = typer.Option(None, help="Projector output size.", show_default="128"),
    proj_hidden: int | None = typer.Option(
        None, help="Projector hidden width.", show_default="2048"
    ),
    drop_path: float | None = typer.Option(
        None,
        help="Stochastic depth of the backbone during pretraining (timm's drop_path_rate; "
        "not in the recipe). Off at probe and export time.",
        show_default="0",
    ),
    global_views: int | None = typer.Option(None, help="Global crops per image.", show_default="2"),
    local_views: int | None = typer.Option(None, help="Local crops per image.", show_default="6"),
    global_size: str | None = typer.Option(
        None, help="Global crop size in pixels, or auto (from the folder's typical resolution)."
    ),
    local_size: str | None = typer.Option(None, help="Local crop size in pixels, or auto."),
    global_scale: str | None = typer.Option(None, help="Area range of global crops, e.g. 0.3,1.0."),
    local_scale: str | None = typer.Option(None, help="Area range of local crops, e.g. 0.05,0.3."),
    crop_pct: str | None = typer.Option(
        None,
        help="Share of the image's shorter side kept by the eval view (resize, then centre "
        "crop) that probe, embed and the export use, or auto (timm's for the architecture, "
        "0.875 or 0.9); from 0.1 to 1. 1 keeps the whole image: for images whose borders matter.",
        show_default="auto",
    ),
    augment: list[str] | None = typer.Option(
        None,
        metavar="KEY=VALUE",
        help="An augmentation setting, repeatable: hflip_p, jitter_p, brightness, contrast, "
        "saturation, hue, grayscale_p, blur_p, blur_sigma (e.g. 0.1,2.0), solarize_p, "
        "solarize_threshold, ratio; e.g. --augment blur_p=0. Defaults: the paper's recipe. "
        "Off in the recipe: vflip_p (vertical flip) and rot90_p (a turn by 90, 180 or 270 "
        "degrees), for images with no up and down.",
    ),
    seed: int | None = typer.Option(None, help="Seed for init, order and crops.", show_default="0"),
    workers: str | None = typer.Option(
        None, help="Data-loading processes per GPU/process, or auto."
    ),
    device: str | None = typer.Option(None, help="auto, cpu or cuda.", show_default="auto"),
    precision: str | None = typer.Option(
        None, help="auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32."
    ),
    compile: bool | None = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the model."
    ),
    max_steps: int | None = typer.Option(
        None,
        help="Stop when the run reaches this step, counted from the run's start, not from a "
        "resume (checkpointed; continue with --resume).",
    ),
    keep_every: str | None = typer.Option(
        None, help="Keep a checkpoint every N epochs for model selection; auto: ~10 per run."
    ),
    log_every: int | None = typer.Option(
        None, help="Steps between lines in metrics.jsonl and the plain log.", show_default="1"
    ),
    holdout: str | None = typer.Option(
        None, help="Images kept out of training for the label-free score, or auto."
    ),
    labels: Path | None = typer.Option(
        None, help="Optional CSV (path,label): probe each kept checkpoint in the report."
    ),
    log_to: list[str] | None = typer.Option(
        None,
        "--log-to",
        metavar="TRACKER",
        help="Also log the curves, held-out scores and config to tensorboard (RUN/tensorboard), "
        "mlflow (a SQLite store in RUN, or --mlflow-uri) or wandb (offline in RUN/wandb unless "
        "logged in); repeatable. Each needs its extra: pip install 'lejepa-cli\\[tensorboard]'.",
    ),
    mlflow_uri: str | None = typer.Option(
        None, help="MLflow tracking URI for --log-to mlflow (a server, or a database)."
    ),
    init: str | None = typer.Option(
        None,
        "--init",
        metavar="SOURCE",
        help="Start from these weights instead of random ones: a timm name (resnet50.a1_in1k, "
        "hf-hub:timm/..., or timm for --arch's default), a .safetensors/.pth file (with --arch), "
        "an export or timm model folder, or a run or one of its checkpoints. Lowers the "
        "defaults of --lr (1e-4) and --warmup-epochs (5% of the epochs).",
    ),
    init_checkpoint: str | None = typer.Option(
        None,
        "--init-checkpoint",
        callback=checkpoint_flag,
        help="When --init is a run: last, best, an epoch number or a checkpoint name.",
        show_default="last",
    ),
    init_partial: bool | None = typer.Option(
        None,
        "--init-partial/--no-init-partial",
        help="Load the --init tensors that match the architecture and list the rest in "
        "train.log, instead of refusing a mismatch.",
    ),
    config_file: Path | None = typer.Option(
        None, "--config", help="YAML file whose keys mirror these flags (flags win)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace the run in --out: removes the files a run writes there, and only those.",
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="With --resume: accept a changed config (shown as a diff) or a changed image "
        "folder. With another batch size or image count the run continues in the epoch it "
        "stopped in, at the same place in that epoch's order.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Pretrain a backbone on a folder of images with LeJEPA.

    Writes config.yaml, metrics.jsonl, checkpoints/, skipped.txt, selection.jsonl, report.json,
    report.html and train.log into --out. One process at a time: a second one on the same --out
    is refused with the holder's PID and host (the lock is released by the system when the
    process ends, even when it is killed). SIGINT, SIGTERM, SIGHUP or a closed stdout write a
    checkpoint and stop. Multi-GPU: torchrun --nproc-per-node N -m lejepa_cli pretrain ...
    """
    from lejepa_cli import config as config_module
    from lejepa_cli.progress import make_reporter
    from lejepa_cli.train import pretrain as run_pretrain

    overrides = config_module.load_yaml(config_file) if config_file else {}
    flags = {
        "data": str(data) if data else None,
        "out": str(out) if out else None,
        "arch": arch,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup_epochs": warmup_epochs,
        "lam": lam,
        "num_slices": num_slices,
        "proj_dim": proj_dim,
        "proj_hidden": proj_hidden,
        "drop_path": drop_path,
        "global_views": global_views,
        "local_views": local_views,
        "global_size": global_size,
        "local_size": local_size,
        "global_scale": global_scale,
        "local_scale": local_scale,
        "crop_pct": crop_pct,
        "augment": augment or None,
        "seed": seed,
        "workers": workers,
        "device": device,
        "precision": precision,
        "compile": compile,
        "max_steps": max_steps,
        "keep_every": keep_every,
        "log_every": log_every,
        "holdout": holdout,
        "labels": str(labels) if labels else None,
        "log_to": log_to or None,
        "mlflow_uri": mlflow_uri,
        "init": init,
        "init_checkpoint": init_checkpoint,
        "init_partial": init_partial,
    }
    overrides.update({k: v for k, v in flags.items() if v is not None})
    every = overrides.get("log_every", 1)  # a bad value is refused with the rest of the config
    ok = isinstance(every, int) and not isinstance(every, bool) and every > 0
    reporter = make_reporter(quiet, every if ok else 1)
    result = run_pretrain(
        overrides,
        resume=resume,
        overwrite=overwrite,
        force=force,
        reporter=reporter,
        config_file=config_file,
    )
    if not quiet and result.is_main:
        state = "finished" if result.finished else f"stopped at step {result.step}"
        loss = f"{result.last_loss:.4f}" if result.last_loss is not None else "-"
        done = result.step - result.start_step
        steps = f"{done} step{'' if done == 1 else 's'}"
        if result.start_step:
            steps += f" (from step {result.start_step})"
        typer.echo(
            f"{state}: {steps} in {result.seconds:.0f}s, last loss {loss}, "
            f"{result.skipped} unreadable files skipped"
        )
        typer.echo(f"run: {result.run_dir}")
        if result.checkpoint is not None:
            typer.echo(f"checkpoint: {result.checkpoint}")
        typer.echo(f"report: {result.run_dir / 'report.html'}")
        if not result.finished:
            typer.echo(f"continue with: lejepa pretrain --resume --out {result.run_dir}")
