"""`lejepa pretrain`: flags -> config overrides -> one call into the engine.

The options that set the run's config are generated from `PretrainConfig`'s fields (each field's
`flag` metadata: help, names, metavar, command-line type), so a new setting is declared once.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import typer

from lejepa_cli.cli.base import app
from lejepa_cli.config import PretrainConfig

_OPTION = inspect.Parameter.KEYWORD_ONLY


def _cli_type(f: dataclasses.Field) -> Any:
    """The type a config field takes on the command line: numbers and flags as themselves,
    'auto'-able values and ranges as text, mappings and lists as repeatable text."""
    if f.metadata["cli_type"] is not None:
        return f.metadata["cli_type"]
    kind = str(f.type)
    if kind.startswith(("dict", "list")):
        return list[str]
    simple = {"int": int, "float": float, "str": str, "bool": bool}
    return simple.get(kind.removesuffix(" | None"), str)


def config_parameters() -> list[inspect.Parameter]:
    """One Typer parameter per config field with a flag, in the fields' order; each defaults
    to None (not given), so an unset flag never overrides run.yaml or the saved config."""
    params = []
    for f in dataclasses.fields(PretrainConfig):
        if "help" not in f.metadata:
            continue
        m = f.metadata
        extra = {"show_default": m["show"]} if m["show"] is not None else {}
        if m["metavar"] is not None:
            extra["metavar"] = m["metavar"]
        if f.name == "data":
            info = typer.Argument(None, help=m["help"], **extra)
        else:
            info = typer.Option(None, *m["names"], help=m["help"], **extra)
        params.append(
            inspect.Parameter(f.name, _OPTION, default=info, annotation=_cli_type(f) | None)
        )
    return params


def _overrides(settings: dict[str, Any]) -> dict[str, Any]:
    """The flags given, as config overrides: paths as text, an empty repeatable as not given."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, Path):
            value = str(value)
        if value is not None and value != []:
            out[key] = value
    return out


def pretrain(
    *,
    config_file: Path | None,
    resume: bool,
    overwrite: bool,
    force: bool,
    quiet: bool,
    **settings: Any,
) -> None:
    """Pretrain a backbone on a folder of images with LeJEPA.

    Writes config.yaml, metrics.jsonl, checkpoints/, skipped.txt, selection.jsonl, report.json,
    report.html and train.log into --out. One process at a time: a second one on the same --out
    is refused with the holder's PID and host (the lock is released by the system when the
    process ends, even when it is killed). SIGINT, SIGTERM, SIGHUP or a closed stdout write a
    checkpoint and stop. Multi-GPU: torchrun --nproc-per-node N -m lejepa_cli pretrain ...
    """
    from lejepa_cli import config as config_module
    from lejepa_cli.progress import make_progress
    from lejepa_cli.train import pretrain as run_pretrain

    overrides = config_module.load_yaml(config_file) if config_file else {}
    overrides.update(_overrides(settings))
    every = overrides.get("log_every", 1)  # a bad value is refused with the rest of the config
    ok = isinstance(every, int) and not isinstance(every, bool) and every > 0
    result = run_pretrain(
        overrides,
        resume=resume,
        overwrite=overwrite,
        force=force,
        callbacks=make_progress(quiet, every if ok else 1),
        config_file=config_file,
    )
    if not quiet and result.is_main:
        _summary(result)


def _summary(result) -> None:
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


_RUN_OPTIONS = [
    inspect.Parameter(
        "config_file",
        _OPTION,
        default=typer.Option(
            None, "--config", help="YAML file whose keys mirror these flags (flags win)."
        ),
        annotation=Path | None,
    ),
    inspect.Parameter(
        "resume",
        _OPTION,
        default=typer.Option(False, "--resume", help="Continue the run in --out."),
        annotation=bool,
    ),
    inspect.Parameter(
        "overwrite",
        _OPTION,
        default=typer.Option(
            False,
            "--overwrite",
            help="Replace the run in --out: removes the files a run writes there, and only those.",
        ),
        annotation=bool,
    ),
    inspect.Parameter(
        "force",
        _OPTION,
        default=typer.Option(
            False,
            "--force",
            help="With --resume: accept a changed config (shown as a diff) or a changed image "
            "folder. With another batch size or image count the run continues in the epoch it "
            "stopped in, at the same place in that epoch's order.",
        ),
        annotation=bool,
    ),
    inspect.Parameter(
        "quiet",
        _OPTION,
        default=typer.Option(False, "--quiet", "-q", help="No progress output."),
        annotation=bool,
    ),
]
pretrain.__signature__ = inspect.Signature([*config_parameters(), *_RUN_OPTIONS])
pretrain.__annotations__ = {}  # Typer reads the types from the signature above
app.command(no_args_is_help=True)(pretrain)
