"""A two-node Ray cluster on localhost: a run completes, survives killed workers, and a
killed driver's rerun recomputes nothing stored.

    PYTHONPATH=src python benchmarks/ray_cluster.py

1. ``ray start --head`` and a second ``ray start --address`` on this machine, one CPU and a
   resource tag each (two nodes of one cluster).
2. The reference: the same configuration on the process pool of this machine.
3. ``advlab run --executor ray --address``; once some shards are stored, every Ray worker
   process of the second node is killed (SIGKILL): Ray retries their tasks, the run
   completes, no stored shard is lost or rewritten, the results equal the reference.
4. A fresh database; the driver (``advlab run``) is killed (SIGKILL) mid-run; the rerun
   completes, rewrites none of the cells and shards stored before, and equals the reference.

The cluster's processes are found by its session directory and stopped by pid at the end
(``ray stop`` would stop every Ray cluster of the machine).
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import advlab
from advlab.evaluation.store import Store

PORT = 6391
ADDRESS = f"127.0.0.1:{PORT}"
RAY = str(Path(sys.executable).with_name("ray"))
SRC = str(Path(advlab.__file__).parents[1])
ENV = {**os.environ, "PYTHONPATH": SRC, "RAY_USAGE_STATS_ENABLED": "0",
       "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"), "OMP_NUM_THREADS": "1",
       "OMP_WAIT_POLICY": "PASSIVE"}

CONFIG = """
name = "cluster"
batch_size = 40
shard_size = 40
[data]
name = "digits"
n = 320
[[models]]
name = "digits-mlp"
[[attacks]]
name = "pgd"
eps = [0.05, 0.1, 0.2]
params = { steps = 300 }
[[attacks]]
name = "fgsm"
eps = [0.05, 0.1, 0.2]
[adaptive]
enabled = false
[sanity]
enabled = false
"""


def sh(*args: str) -> None:
    subprocess.run(args, env=ENV, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, command line) of every process."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                args = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            out.append((int(d.name), ppid, args))
    return out


def node_workers(tag: str) -> dict[int, str]:
    """pid -> title of the worker processes of the node whose raylet carries ``tag``."""
    procs = processes()
    raylets = {p for p, _, a in procs if "raylet/raylet" in a and f"{tag},1" in a}
    return {p: a.strip() for p, pp, a in procs if pp in raylets and a.startswith("ray::")
            and "Agent" not in a}


def stop_cluster(temp: str) -> None:
    """Kill, by pid, every process of the cluster under ``temp`` and their children."""
    procs = processes()
    ours = {p for p, _, a in procs if temp in a}
    ours |= {p for p, pp, _ in procs if pp in ours}
    for p in ours:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def stamps(db: Path) -> tuple[dict, dict]:
    """{(key, first row): finished} of the stored shards, {key: finished} of the cells."""
    if not db.exists():
        return {}, {}
    with sqlite3.connect(db, timeout=30) as con:
        try:
            shards = {(k, s): f for k, s, f in con.execute("SELECT key, start, finished "
                                                            "FROM shards")}
            cells = dict(con.execute("SELECT key, finished FROM cells"))
        except sqlite3.OperationalError:
            return {}, {}
    return shards, cells


def advlab_run(cfg: Path, root: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "advlab.cli", "run", str(cfg), "--root",
                             str(root), "--no-progress", *extra], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_for_rows(db: Path, proc: subprocess.Popen, rows: int) -> tuple[dict, dict]:
    """Wait until ``rows`` shards or cells are stored (or the run ends)."""
    while proc.poll() is None:
        s, c = stamps(db)
        if len(s) + len(c) >= rows:
            return s, c
        time.sleep(0.2)
    raise SystemExit(f"the run ended first: {proc.stderr.read().decode()[-2000:]}")


def same_results(a: Path, b: Path) -> bool:
    with Store(a / "advlab.sqlite") as x, Store(b / "advlab.sqlite") as y:
        keys = [k for k, _ in x.run("cluster")["cells"]]
        if [k for k, _ in y.run("cluster")["cells"]] != keys or y.finished(keys) != set(keys):
            return False
        for k in keys:
            ex, ey = x.examples(k), y.examples(k)
            if not all(np.array_equal(ex[c], ey[c], equal_nan=ex[c].dtype.kind == "f")
                       for c in ex):
                return False
    return True


def timed(proc: subprocess.Popen) -> float:
    t0 = time.perf_counter()
    if proc.wait() != 0:
        raise SystemExit(proc.stderr.read().decode()[-3000:])
    return time.perf_counter() - t0


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="advlab-cluster-"))
    temp = str(work / "ray")
    cfg = work / "cluster.toml"
    cfg.write_text(CONFIG)
    print(f"work dir {work}")
    t = timed(advlab_run(cfg, work / "reference", "--workers", "1"))
    print(f"reference (process pool, 1 worker): {t:.1f} s")
    try:
        sh(RAY, "start", "--head", f"--port={PORT}", "--num-cpus=1",
           '--resources={"head_node": 1}', "--include-dashboard=false",
           "--disable-usage-stats", f"--temp-dir={temp}")
        sh(RAY, "start", f"--address={ADDRESS}", "--num-cpus=1",
           '--resources={"second_node": 1}')
        print("cluster: 2 nodes (head_node, second_node), 1 CPU each")

        # 1. killed workers of one node
        root = work / "killed-workers"
        db = root / "advlab.sqlite"
        t0 = time.perf_counter()
        proc = advlab_run(cfg, root, "--executor", "ray", "--address", ADDRESS)
        before_s, before_c = wait_for_rows(db, proc, 4)
        victims = node_workers("second_node")
        for p in victims:
            os.kill(p, signal.SIGKILL)
        print(f"killed {len(victims)} worker process(es) of second_node "
              f"({', '.join(sorted(set(victims.values())))}) with "
              f"{len(before_s)} shard(s) and {len(before_c)} cell(s) stored")
        if proc.wait() != 0:
            raise SystemExit(proc.stderr.read().decode()[-3000:])
        after_s, after_c = stamps(db)
        kept = all(after_s.get(k) == f or k[0] in after_c for k, f in before_s.items()) and \
            all(after_c.get(k) == f for k, f in before_c.items())
        print(f"  run completed in {time.perf_counter() - t0:.1f} s; stored before the kill "
              f"kept unchanged: {kept}; results equal the reference: "
              f"{same_results(work / 'reference', root)}")

        # 2. killed driver, rerun
        root = work / "killed-driver"
        db = root / "advlab.sqlite"
        proc = advlab_run(cfg, root, "--executor", "ray", "--address", ADDRESS)
        wait_for_rows(db, proc, 6)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(1.0)
        before_s, before_c = stamps(db)
        print(f"killed the driver with {len(before_s)} shard(s) and {len(before_c)} cell(s) "
              "stored")
        t = timed(advlab_run(cfg, root, "--executor", "ray", "--address", ADDRESS))
        after_s, after_c = stamps(db)
        rewritten = [k for k, f in before_c.items() if after_c.get(k) != f] + \
            [k for k, f in before_s.items() if after_s.get(k, f) != f]
        print(f"  rerun completed in {t:.1f} s; stored rows rewritten: {len(rewritten)}; "
              f"results equal the reference: {same_results(work / 'reference', root)}")
    finally:
        stop_cluster(temp)


if __name__ == "__main__":
    main()
