"""`advlab run` stopped by a signal while its workers compute: no process of it survives
(SIGKILL, SIGTERM), and SIGINT returns at once."""
from __future__ import annotations

import ctypes
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import advlab

CONFIG = """
name = "sig"
workers = 2
[data]
name = "digits"
n = 300
[[models]]
name = "digits-mlp"
[[attacks]]
name = "pgd"
eps = [0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.11, 0.12]
params = { steps = 3000 }
[adaptive]
enabled = false
[sanity]
enabled = false
"""


def interactive() -> None:
    """The run as started from a terminal: SIGINT at its default (a shell starts background
    jobs, a CI script's among them, with SIGINT ignored, and Python keeps it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def children(pid: int) -> set[int]:
    """The live processes whose parent is ``pid`` (zombies count as gone)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == pid and state != "Z":
                out.add(int(entry.name))
    return out


def alive(pids: set[int]) -> set[int]:
    out = set()
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(p)
    return out


def start_run(tmp_path: Path, config: str, stderr: int) -> subprocess.Popen:
    """``advlab run`` of ``config`` as from a terminal, once its workers compute."""
    cfg = tmp_path / "sig.toml"
    cfg.write_text(config)
    env = {**os.environ, "PYTHONPATH": str(Path(advlab.__file__).parents[1]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "advlab.cli", "run", str(cfg), "--root",
                             str(tmp_path / "runs"), "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=interactive)
    deadline = time.time() + 120
    while len(children(proc.pid)) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    return proc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forked workers: Linux")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_run_and_its_workers(tmp_path: Path, sig: signal.Signals) -> None:
    proc = start_run(tmp_path, CONFIG, subprocess.PIPE)
    workers = children(proc.pid)
    assert len(workers) >= 2, "the run ended or did not start its workers"
    time.sleep(0.5)                                       # they are computing now
    t0 = time.time()
    proc.send_signal(sig)
    proc.wait(timeout=30)
    took = time.time() - t0
    time.sleep(1.0)
    assert alive(workers) == set(), f"workers left after {sig.name}"
    if sig != signal.SIGKILL:
        assert took < 2.0, f"{sig.name}: the run took {took:.1f} s to stop"
        assert proc.returncode == 130
        assert b"interrupted" in proc.stderr.read()


TGKILL = {"x86_64": 234, "aarch64": 131}  # the syscall that signals one thread of a process


@pytest.mark.skipif(platform.machine() not in TGKILL or not sys.platform.startswith("linux"),
                    reason="tgkill: Linux on x86_64 or aarch64")
def test_a_signal_to_another_thread_stops_the_run_at_once(tmp_path: Path) -> None:
    # the kernel may hand SIGINT to any thread of the driver (the pool's threads among
    # them); Python raises KeyboardInterrupt only in the main thread, once it wakes
    proc = start_run(tmp_path, CONFIG.replace("steps = 3000", "steps = 30000"),  # minutes
                     subprocess.DEVNULL)
    time.sleep(0.5)
    others = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid]
    assert others, "the driver has no other thread"
    t0 = time.time()
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.syscall(TGKILL[platform.machine()], proc.pid, max(others),
                        signal.SIGINT) == 0
    proc.wait(timeout=60)
    assert proc.returncode == 130
    assert time.time() - t0 < 2.0
