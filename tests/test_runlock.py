"""The run-directory lock between real processes: a live holder blocks and is named, a dead
one does not block, and the lock file records who holds it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lejepa_cli.errors import RunLocked
from lejepa_cli.runlock import LOCK_FILE, RunLock

HOLD = """
import sys, time
from lejepa_cli.runlock import RunLock
lock = RunLock(sys.argv[1])
assert lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def test_a_live_holder_blocks_and_is_named(tmp_path, holder):
    with pytest.raises(RunLocked) as info:
        RunLock(tmp_path).acquire()
    message = str(info.value)
    assert f"PID {holder.pid} on {socket.gethostname()}" in message and "\n" not in message
    assert info.value.exit_code == 1


def test_a_killed_holder_does_not_block(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert f"pid {holder.pid}" in (tmp_path / LOCK_FILE).read_text()  # the stale file is left
    with RunLock(tmp_path) as lock:
        assert lock.acquire()
        assert f"pid {os.getpid()}\n" in (tmp_path / LOCK_FILE).read_text()


def test_without_create_an_absent_lock_file_is_not_made(tmp_path):
    lock = RunLock(tmp_path)
    assert lock.acquire(create=False) is False and not (tmp_path / LOCK_FILE).exists()
    assert lock.acquire() and lock.held
    lock.release()
    assert not lock.held and RunLock(tmp_path).acquire()


def test_release_lets_another_process_take_it(tmp_path):
    lock = RunLock(tmp_path)
    assert lock.acquire()
    probe = [
        sys.executable,
        "-c",
        f"from lejepa_cli.runlock import RunLock; RunLock({str(tmp_path)!r}).acquire()",
    ]
    assert subprocess.run(probe, capture_output=True).returncode != 0
    lock.release()
    time.sleep(0.05)
    assert subprocess.run(probe, capture_output=True).returncode == 0
    assert Path(tmp_path / LOCK_FILE).is_file()


def test_a_probe_without_create_writes_nothing_into_an_existing_file(tmp_path):
    (tmp_path / LOCK_FILE).write_text("pid 1\nhost elsewhere\n")
    lock = RunLock(tmp_path)
    assert lock.acquire(create=False)
    assert (tmp_path / LOCK_FILE).read_text() == "pid 1\nhost elsewhere\n"
    assert lock.acquire()  # now the run goes ahead: this process's details
    assert f"pid {os.getpid()}\n" in (tmp_path / LOCK_FILE).read_text()
    lock.release()
