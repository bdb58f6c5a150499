"""The Typer application and the one place where errors become messages and exit codes.

Command modules register on `app` and call into the library. Nothing here imports torch, so
`lejepa --help` stays fast.
"""

from __future__ import annotations

import errno
import inspect
import os
import sys
import traceback
from typing import Any

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


def crop_pct_option(whose: str) -> Any:
    """--crop-pct of probe, embed and export; `whose` ends the help's first sentence."""
    return typer.Option(
        None,
        "--crop-pct",
        help=f"Share of the image's shorter side kept by the eval view (resize, then centre "
        f"crop), {whose}; from 0.1 to 1, 1 keeps the whole image.",
        show_default="the model's",
    )


def checkpoint_flag(value: str | None) -> str | None:
    """--checkpoint: an empty name is refused, not read as the default."""
    if value is not None and not value.strip():
        raise typer.BadParameter(
            "is empty; give last, best, an epoch number or a checkpoint name, or leave it out"
        )
    return value


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
    from rich.markup import escape

    # The message quotes paths, labels and file names: brackets in them are text, not markup,
    # and a line break in one (or in a library's message) must not split the one line.
    one_line = message.replace("\r", "\\r").replace("\n", "\\n")
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]error:[/bold red] {escape(one_line)}", markup=True
    )


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app and map errors to one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested(argv)
    # --debug is global: accepted anywhere on the line, not only before the command
    args = ["--debug", *(a for a in argv if a != "--debug")] if "--debug" in argv else argv
    try:
        code = app(args=args, prog_name="lejepa", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _error_line("aborted")
        sys.exit(130)
    except LejepaError as exc:
        if debug:
            traceback.print_exc()  # the traceback, with the error's own exit code
        else:
            _error_line(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        if debug:
            raise
        _error_line("interrupted")
        sys.exit(130)
    except OSError as exc:  # a path the user gave cannot be read or written
        if debug:
            raise
        _error_line(os_error_line(exc))
        sys.exit(1)
    except Exception as exc:
        if _is_click_error(exc):  # bad flags or arguments: click's message on one line, exit 2
            ctx = getattr(exc, "ctx", None)
            command = getattr(ctx, "command_path", None) or "lejepa"
            message = exc.format_message().rstrip(".")
            if not message:  # no arguments at all: the help was printed above
                message = "no command given" if command == "lejepa" else "no arguments given"
            _error_line(f"{message}{' ' if message.endswith('?') else '; '}see '{command} --help'")
            sys.exit(exc.exit_code)
        if debug:
            raise
        # An unexpected failure still gets one line unless --debug.
        _error_line(
            f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
        )
        sys.exit(1)
    if code == 130:  # Typer turns Ctrl-C inside a command into a bare exit code 130
        _error_line("interrupted")
    sys.exit(code if isinstance(code, int) else 0)


_OS_FIXES = {
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.EISDIR: "it is a folder; give a file path",
    errno.ENOTDIR: "part of the path is a file, not a folder; choose another path",
    errno.EEXIST: "something is already there; choose another path",
    errno.ENOENT: "check the path",
    errno.ELOOP: "a symbolic link there points back to itself; fix or remove the link",
    errno.ENOSPC: "the disk is full; free some space or choose another path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}


def os_error_line(exc: OSError) -> str:
    """An OSError as one line: what failed, on which path, and what to do about it."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f": {exc.filename}" if exc.filename is not None else ""
    fix = _OS_FIXES.get(exc.errno or -1, "check the path and try again")
    return f"{reason}{where}; {fix}"


def _is_click_error(exc: Exception) -> bool:
    # Typer vendors click in recent releases and uses the real one in older ones: match by shape.
    return any(c.__name__ == "ClickException" for c in type(exc).__mro__) and hasattr(exc, "show")
