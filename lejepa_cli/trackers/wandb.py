"""Weights & Biases: online when the user has logged in, otherwise offline under RUN/wandb/.

An offline run is uploaded later with `wandb sync RUN/wandb/offline-run-*`. WANDB_MODE, when
set, decides instead (for example `disabled`); WANDB_PROJECT names the project (default lejepa).
"""

from __future__ import annotations

import json
import netrc
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from lejepa_cli import rundir
from lejepa_cli.trackers.base import Tracker, read_state, write_state
from lejepa_cli.training.callbacks import RunContext

PROJECT = "lejepa"
DEFAULT_HOST = "https://api.wandb.ai"
FOLDER = rundir.WANDB  # W&B makes RUN/wandb/ itself when given dir=RUN
_BLOCK = 32768  # the .wandb file is a LevelDB-format log: 32 KiB blocks of framed chunks
_FULL, _LAST = 1, 4


def logged_in() -> bool:
    """Whether W&B has credentials: WANDB_API_KEY, or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_files(run_dir: Path, run_id: str = "*") -> list[Path]:
    """The `.wandb` logs of a run under RUN/wandb, oldest first (each resume adds a folder)."""
    found = Path(run_dir, FOLDER).glob(f"*run-*-{run_id}/run-{run_id}.wandb")
    return sorted((p for p in found if not p.parent.is_symlink()), key=lambda p: p.parent.name)


def records(path: Path) -> Iterator:
    """The protobuf records of one `.wandb` log, as far as it was written.

    Framing: a 7-byte file header (`:W&B`, 0xBEE1, version), then chunks with a 7-byte header
    (crc32, length, type FULL/FIRST/MIDDLE/LAST) that never straddle a 32 KiB block.
    """
    from wandb.proto import wandb_internal_pb2

    data, pos, parts = path.read_bytes(), 7, b""
    if data[:4] != b":W&B":
        return
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (_FULL, _LAST):
            yield wandb_internal_pb2.Record.FromString(parts)
            parts = b""


def history(path: Path) -> Iterator[dict]:
    """The rows `run.log` recorded in one `.wandb` log, keys as logged, values decoded."""
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            yield {
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in record.history.item
            }


class WandbTracker(Tracker):
    """Metrics against a `step` axis (held-out scores may arrive after later rows), the config
    as the W&B config.

    Resume: the run id is kept in RUN/trackers.json and the run is reopened with that id. W&B
    appends a re-logged step instead of replacing it, and it writes its log every 15 s, so a
    kill loses the last seconds: the last step it durably holds is read back (the server's
    summary online, the offline logs under RUN/wandb otherwise), and only what follows is logged.
    """

    name = "wandb"

    def open(self, ctx: RunContext) -> int:
        import wandb

        state = (read_state(self.run_dir).get(self.name) or {}) if ctx.resumed else {}
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or PROJECT,
            name=self.run_dir.name,
            id=state.get("run_id"),  # None: W&B picks one
            resume="allow",
            dir=str(self.run_dir),
            mode=os.environ.get("WANDB_MODE") or ("online" if logged_in() else "offline"),
            config=ctx.config,
            allow_val_change=True,  # a resume may change a setting (epochs, for one)
            settings=wandb.Settings(console="off"),  # leave the terminal to the progress bar
        )
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        write_state(self.run_dir, self.name, {"run_id": self.run.id})
        if not state:
            return 0
        online = int(self.run.summary.get("step") or 0)
        rows = [row for path in run_files(self.run_dir, self.run.id) for row in history(path)]
        if not online:  # offline, its own logs tell which held-out scores survived a kill
            self.held_scores = {
                int(row.get("step", 0))
                for row in rows
                if any(k.startswith("holdout/") for k in row)
            }
        return int(max([online] + [row.get("step", 0) for row in rows]))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log({"step": step, **metrics})

    def close(self, step: int, reason: str) -> None:
        self.run.finish(exit_code=0 if reason in ("finished", "max_steps") else 1)
