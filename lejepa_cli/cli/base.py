"""The Typer application and the one place where errors become messages and exit codes.

Command modules register on `app` and call into the library. Nothing here imports torch, so
`lejepa --help` stays fast.
"""

from __future__ import annotations

import inspect
import os
import sys

import typer

from lejepa_cli import __version__
from lejepa_cli.errors import LejepaError

app = typer.Typer(
    name="lejepa",
    help=(
        "Pretrain a vision backbone on your own folder of images with LeJEPA, judge it with a few "
        "labels, and export it."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def reflow_help(doc: str) -> str:
    """A docstring as command help: paragraphs kept, the line breaks inside each one removed."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lejepa {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show full tracebacks instead of one-line errors."
    ),
) -> None:
    """LeJEPA pretraining, probing, export and model selection from the command line."""


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("LEJEPA_DEBUG", "") not in ("", "0")


def _error_line(message: str) -> None:
    # rich is imported lazily: it is only needed when there is something to say.
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]error:[/bold red] {message}", markup=True
    )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and map errors to one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    try:
        code = app(args=argv, prog_name="lejepa", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _error_line("aborted")
        sys.exit(130)
    except LejepaError as exc:
        if debug:
            raise
        _error_line(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        if debug:
            raise
        _error_line("interrupted")
        sys.exit(130)
    except Exception as exc:
        if _is_click_error(exc):  # bad flags or arguments: click's own message, exit 2
            exc.show()
            sys.exit(exc.exit_code)
        if debug:
            raise
        # An unexpected failure still gets one line unless --debug.
        _error_line(
            f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def _is_click_error(exc: Exception) -> bool:
    # Typer vendors click in recent releases and uses the real one in older ones: match by shape.
    return any(c.__name__ == "ClickException" for c in type(exc).__mro__) and hasattr(exc, "show")
