"""The command-line edge: help and version without torch, errors as one line with exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lejepa_cli import __version__
from lejepa_cli.cli.base import main
from lejepa_cli.errors import DataError, LejepaError


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lejepa_cli", *args], capture_output=True, text=True, timeout=120
    )


def test_version_and_help_do_not_import_torch():
    code = (
        "import sys\n"
        "from lejepa_cli.cli import main\n"
        "for args in (['--version'], ['--help']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"lejepa {__version__}" in proc.stdout


def test_unknown_command_is_a_usage_error():
    proc = _run("no-such-command")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "exc, code", [(DataError("no images in x: add some"), 2), (LejepaError("boom"), 1)]
)
def test_library_errors_become_one_line(monkeypatch, capsys, exc, code):
    import lejepa_cli.cli.base as app_module

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(app_module, "app", fail)
    with pytest.raises(SystemExit) as info:
        main(["anything"])
    assert info.value.code == code
    err = capsys.readouterr().err
    assert err.strip().startswith("error:")
    assert str(exc) in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(monkeypatch, capsys):
    import lejepa_cli.cli.base as app_module

    def fail(*args, **kwargs):
        raise LejepaError("boom")

    monkeypatch.setattr(app_module, "app", fail)
    with pytest.raises(SystemExit) as exit_info:
        main(["anything", "--debug"])  # --debug counts after the command too
    assert exit_info.value.code == LejepaError.exit_code  # the error's own exit code
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "LejepaError: boom" in err


def test_command_help_reflows_docstring_paragraphs():
    from lejepa_cli.cli import app
    from lejepa_cli.cli.base import reflow_help

    assert reflow_help("First line.\n\n    Two\n    lines.\n\n    Next.") == (
        "First line.\n\nTwo lines.\n\nNext."
    )
    helps = {info.callback.__name__: info.help for info in app.registered_commands}
    assert len(helps) == 7 and all(helps.values())
    for text in helps.values():
        assert all("\n" not in p for p in text.split("\n\n")), text


def test_each_command_help_exits_zero_and_names_its_arguments():
    for command, metavar in (("pretrain", "[DATA]"), ("probe", "RUN_OR_EXPORT"),
                             ("export", "RUN"), ("embed", "FOLDER"), ("inspect", "paths"),
                             ("explore", "FOLDER"), ("shard", "DATA")):  # fmt: skip
        proc = _run(command, "--help")
        assert proc.returncode == 0, proc.stderr
        assert f"lejepa {command}" in proc.stdout and metavar in proc.stdout
