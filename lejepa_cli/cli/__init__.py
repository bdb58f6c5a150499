"""The `lejepa` command line: one module per command, all registered on one Typer app."""

from lejepa_cli.cli import embed as _embed  # noqa: F401  (registers the command)
from lejepa_cli.cli import explore as _explore  # noqa: F401  (registers the command)
from lejepa_cli.cli import export as _export  # noqa: F401  (registers the command)
from lejepa_cli.cli import inspect as _inspect  # noqa: F401  (registers the command)
from lejepa_cli.cli import pretrain as _pretrain  # noqa: F401  (registers the command)
from lejepa_cli.cli import probe as _probe  # noqa: F401  (registers the command)
from lejepa_cli.cli import shard as _shard  # noqa: F401  (registers the command)
from lejepa_cli.cli.base import app, main, reflow_help

# Typer's rich help keeps the single line breaks of a docstring's later paragraphs; reflow them.
for _info in app.registered_commands:
    if _info.help is None and _info.callback is not None:
        _info.help = reflow_help(_info.callback.__doc__ or "")

__all__ = ["app", "main"]
