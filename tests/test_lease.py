"""Run leases: exclusive, heartbeat, stale takeover, and no double holder under races."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

from reproduce.rundir.lease import Lease, is_live, read_holder


def test_exclusive_and_released(tmp_path):
    a, b = Lease(tmp_path), Lease(tmp_path)
    assert a.acquire()
    assert not b.acquire()
    a.release()
    assert read_holder(tmp_path)["released"] is True
    assert b.acquire()
    assert b.generation == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lease.1"]  # lower generation removed
    b.release()


def test_stale_heartbeat_is_taken_over_and_the_old_holder_notices(tmp_path):
    old = Lease(tmp_path, stale_after=0.5, heartbeat_every=3600)
    assert old.acquire()
    # pretend the holder lives on another host and stopped beating
    doc = json.loads(old.path.read_text())
    doc.update(host="elsewhere", heartbeat=time.time() - 10)
    old.path.write_text(json.dumps(doc))
    assert not is_live(doc, stale_after=0.5)
    new = Lease(tmp_path, stale_after=0.5)
    assert new.acquire() and new.generation == 1
    old.beat()  # the old holder's next heartbeat sees the higher generation
    assert old.lost
    old.release()
    assert read_holder(tmp_path)["pid"] == os.getpid() and not read_holder(tmp_path)["released"]
    new.release()


def test_dead_process_on_this_host_is_stale_at_once(tmp_path):
    lease = Lease(tmp_path)
    assert lease.acquire()
    doc = json.loads(lease.path.read_text())
    doc["pid_start"] = "0"  # a PID whose start time does not match: the process is gone
    lease.path.write_text(json.dumps(doc))
    assert not is_live(doc)
    assert Lease(tmp_path).acquire()


def test_requeued_slurm_job_takes_over_its_own_lease(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    lease = Lease(tmp_path)
    assert lease.acquire()
    doc = json.loads(lease.path.read_text())
    doc.update(host="node-a", pid=1)  # the earlier incarnation of job 77 on another node
    assert not is_live(doc)
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    assert is_live(doc)  # another job's fresh lease is respected


def test_unwritten_lease_file_is_live_while_young_then_stale(tmp_path):
    (tmp_path / "lease.0").write_text("")
    assert not Lease(tmp_path, stale_after=60).acquire()
    old = time.time() - 120
    os.utime(tmp_path / "lease.0", (old, old))
    assert Lease(tmp_path, stale_after=60).acquire()


def _race(path: str, barrier, results) -> None:
    barrier.wait()
    lease = Lease(Path(path), stale_after=0.0)  # every lease counts as stale: maximal contention
    got = lease.acquire()
    results.put((os.getpid(), got, lease.generation))
    time.sleep(0.5)


def test_racing_takeovers_never_leave_two_holders(tmp_path):
    """Sixteen processes take over a stale lease at once: generations only grow, so every
    winner but the newest learns at once that it lost."""
    stale = Lease(tmp_path)
    assert stale.acquire()
    stale.release()
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(16), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), barrier, results)) for _ in range(16)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join()
    winners = [gen for _, got, gen in outcomes if got]
    # each generation has at most one holder (O_EXCL), and they are distinct
    assert len(winners) == len(set(winners)) >= 1
