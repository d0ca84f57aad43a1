"""Two runs, one directory: a live holder refuses the second process (one line, exit 2, nothing in
the directory touched); a stale lock of a dead process is taken over with a warning."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import FAST_TRAIN, assert_user_error, run_cli
from partialnet.errors import UserError
from partialnet.utils.run_lock import LOCK_NAME, acquire_run_lock, release_run_lock


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def _lock(run_dir, pid, host=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "x"}))


def test_second_process_into_a_live_run_dir_is_refused_and_touches_nothing(tmp_path, live_pid):
    run_dir = tmp_path / "run"
    _lock(run_dir, live_pid)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"the first run's checkpoint")
    (run_dir / "metrics.csv").write_text("step,loss\n0,1.0\n")
    before = _digest(run_dir)
    proc = run_cli("train.py", FAST_TRAIN + [f"hydra.run.dir={run_dir}"])
    assert_user_error(proc, str(run_dir), f"pid {live_pid}", "in use")
    assert _digest(run_dir) == before
    assert not (run_dir / ".hydra").exists()


def test_lock_of_a_live_process_refuses_in_process(tmp_path, live_pid):
    _lock(tmp_path, live_pid)
    with pytest.raises(UserError, match=f"pid {live_pid}"):
        acquire_run_lock(tmp_path)
    _lock(tmp_path, live_pid, host="another-host")
    with pytest.raises(UserError, match="another-host"):
        acquire_run_lock(tmp_path)


def test_stale_lock_is_taken_over_with_a_warning_and_released(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lock(tmp_path, dead.pid)
    with pytest.warns(UserWarning, match=f"stale lock of pid {dead.pid}"):
        lock = acquire_run_lock(tmp_path)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert acquire_run_lock(tmp_path) == lock  # idempotent for the holder
    release_run_lock(tmp_path)
    assert not lock.exists()


def test_requeued_slurm_job_takes_over_its_own_lock_from_another_node(tmp_path, monkeypatch):
    """A requeued SLURM job may restart on another node: the lock of the same job id is taken
    over (with a warning), while another job's lock from another host is still refused."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "node-a", "started": "x", "job": "4242"}))
    with pytest.warns(UserWarning, match="earlier incarnation of SLURM job 4242"):
        lock = acquire_run_lock(tmp_path)
    assert json.loads(lock.read_text())["job"] == "4242"
    release_run_lock(tmp_path)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "node-a", "started": "x", "job": "777"}))
    with pytest.raises(UserError, match="node-a"):
        acquire_run_lock(tmp_path)
