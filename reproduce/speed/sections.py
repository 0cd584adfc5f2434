"""The six sections of ``gpu-check`` (see gpucheck.py), each run in its own child process
under a time box: ``python -m reproduce.speed.sections --child NAME --params P --result R
--deadline T``. A section saves what it has measured as it goes (``Box``), so a section killed
at its deadline still leaves its numbers."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import faults
from ..rundir.rundir import RunDir
from . import bitchecks
from .bitchecks import _config, _device, _sync
from .gpucheck import (
    HANG_FAULT,
    PAPER_ITERS,
    REPO,
    STEP_CELLS,
    TARGETS,
    Settings,
    boxed,
    child_env,
    tail,
)


class Box:
    """The child's view of its time box, and where it saves what it has measured so far (a
    section killed at the end of its box keeps its partial result)."""

    def __init__(self, deadline: float, result: Path | None = None) -> None:
        self.deadline = deadline
        self.result = result

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self, data: dict[str, Any]) -> None:
        if self.result is not None:
            tmp = self.result.with_name(self.result.name + ".tmp")
            tmp.write_text(json.dumps(data, indent=1, default=str))
            os.replace(tmp, self.result)


def cuda_test_files() -> list[str]:
    """The test files holding CUDA-only tests (collecting only them takes a second, where
    collecting the whole suite takes ten)."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                  if "pytest.mark.cuda" in p.read_text())  # fmt: skip


def section_cuda_tests(s: Settings, box: Box, work: Path) -> dict[str, Any]:
    """pytest -m cuda: the tests that run only where CUDA is present. Outcomes are logged as
    each test ends (tests/conftest.py), so a run cut by the box keeps what it found."""
    log = work / "tests.jsonl"
    cmd = [sys.executable, "-m", "pytest", *cuda_test_files(), "-m", "cuda", "-n", "0", "-q",
           "-p", "no:cacheprovider", "--durations=0"]  # fmt: skip
    env = {**child_env(), "REPRODUCE_TEST_LOG": str(log)}
    try:
        left = max(1.0, box.left() - 5)
        code: int | str = subprocess.run(cmd, cwd=REPO, env=env, timeout=left).returncode
    except subprocess.TimeoutExpired:
        code = "timeout: killed by the section's box (tests not listed did not finish)"
    rank = {"passed": 0, "skipped": 1, "failed": 2}
    tests: dict[str, dict[str, Any]] = {}
    for line in log.read_text().splitlines() if log.is_file() else []:
        r = json.loads(line)
        outcome = "error" if r["outcome"] == "failed" and r["when"] != "call" else r["outcome"]
        r["message"] = r["message"].removeprefix("Skipped: ")
        t = tests.setdefault(r["test"], {"test": r["test"], "outcome": "passed", "seconds": 0.0,
                                         "message": ""})  # fmt: skip
        t["seconds"] += r["seconds"]
        if rank.get(outcome, 3) > rank.get(t["outcome"], 3) or outcome == "error":
            t["outcome"], t["message"] = outcome, r["message"]
    rows = list(tests.values())
    kinds = ("passed", "failed", "error", "skipped")
    counts = {k: sum(t["outcome"] == k for t in rows) for k in kinds}
    return {"pytest_exit": code, "counts": counts, "tests": rows}


def _time_steps(s: Settings, step: Callable[[], Any], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        step()
        _sync(s)
        times.append(time.perf_counter() - t0)
    return times


def measure_step(
    s: Settings, arch: str, procedure: str, kind: str, rounds: int, count: int | None = None
) -> dict[str, Any]:
    """Seconds per generator iteration of one cell: kind 'reference' (the plain eager port),
    'exact' (the default engine) or 'fast' (compiled: its first two iterations, which compile
    the critic and generator steps, are timed as compile_s). ``count``: the cell's FLOPs per
    iteration when already known; otherwise counted first, so that a box that ends during
    the timing never loses a finished timing to the count (seconds on the CPU)."""
    from ..data.datasets import load_demo
    from ..training import flops
    from ..training.trainer import Trainer, configure_numerics

    device = _device(s)
    cfg = _config(s, arch, procedure, "fast" if kind == "fast" else "exact")
    if count is None:
        count = flops.iteration_cost(cfg).flops
    configure_numerics(device, cfg.fast)
    row: dict[str, Any] = {"arch": arch, "procedure": procedure, "kind": kind}
    t0 = time.perf_counter()
    if kind == "reference":
        port = importlib.import_module("tests.reference")  # the checkout's, not the package's
        cell: Any = port.ReferenceCell(cfg, load_demo(), device)
        row["engine"] = "plain eager port"
        warm = 2 if s.device == "cuda" else 1
    else:
        cell = Trainer(cfg, load_demo(), device)
        # iteration 0 has no generator step; CUDA graphs capture on 0 and 1, then replay
        warm = 3 if s.device == "cuda" else 1
    if kind == "fast":
        for _ in range(2):
            cell.step()
        _sync(s)
        row["compile_s"] = round(time.perf_counter() - t0, 2)
        warm = 1
    setup = _time_steps(s, cell.step, warm)
    row["warmup_s"] = round(sum(setup), 3)
    times = _time_steps(s, cell.step, rounds)
    if kind != "reference":
        row["engine"], row["engine_note"] = cell.steps.name, cell.steps.note
    peak = flops.peak_tflops(device, flops.mode_precision(cfg.mode))
    best = min(times)
    row.update(
        ms=1000 * best,
        median_ms=1000 * statistics.median(times),
        rounds=rounds,
        flops=count,
        peak_tflops=peak,
        **flops.utilisation(count, 1 / best, peak),
    )
    return row


def _measure_boxed(s: Settings, work: Path, arch: str, procedure: str, kind: str,
                   limit: float, count: int | None) -> dict[str, Any]:  # fmt: skip
    """measure_step in its own process with its own box (a compile that never ends); the
    cell's FLOP count is handed over when known, so that the box holds only the compile and
    the timing."""
    result = work / f"{arch}-{procedure}-{kind}.json"
    params = work / f"{arch}-{procedure}-{kind}.params.json"
    params.write_text(json.dumps({"settings": asdict(s), "cell": [arch, procedure, kind],
                                  "flops": count}))  # fmt: skip
    t0 = time.monotonic()
    status = boxed([sys.executable, "-m", "reproduce.speed.sections", "--child", "measure",
                    "--params", str(params), "--result", str(result), "--deadline",
                    str(time.time() + limit)], limit, work / "measure.log")  # fmt: skip
    if status == "ok" and result.is_file():
        return json.loads(result.read_text())
    row = {"arch": arch, "procedure": procedure, "kind": kind,
           "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
    if status == "timeout":
        row["error"] = f"compiling and timing exceeded the {limit:.0f} s cap"
    else:
        row["error"] = tail(work / "measure.log", 3) or status
    return row


def _ok(rows: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["kind"] == kind and "ms" in r]


def _speedups(rows: list[dict[str, Any]], gpu: bool) -> list[dict[str, Any]]:
    ref = {(r["arch"], r["procedure"]): r["ms"] for r in _ok(rows, "reference")}
    out = []
    for r in rows:
        base = ref.get((r["arch"], r["procedure"]))
        if r["kind"] == "reference" or "ms" not in r or not base:
            continue
        target = TARGETS.get((r["kind"], r["arch"], r["procedure"])) if gpu else None
        x = base / r["ms"]
        met = None if target is None else x >= target
        out.append({"arch": r["arch"], "procedure": r["procedure"], "kind": r["kind"],
                    "speedup": x, "target": target, "met": met})  # fmt: skip
    return out


def section_step_times(s: Settings, box: Box, work: Path) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    cells = STEP_CELLS[: s.step_cells]
    for arch, procedure in cells:  # the cheap measurements first, in this process
        for kind in ("reference", "exact"):
            rows.append(measure_step(s, arch, procedure, kind, s.rounds))
            box.save({"rows": rows, "speedups": _speedups(rows, s.device == "cuda")})
    for i, (arch, procedure) in enumerate(cells):  # each compile, capped, in its own process
        limit = min(s.compile_cap_s, box.left() - 5)
        if i >= s.fast_cells:
            rows.append({"arch": arch, "procedure": procedure, "kind": "fast",
                         "error": "not measured in the smoke form"})  # fmt: skip
            continue
        if limit < 1:
            rows.append({"arch": arch, "procedure": procedure, "kind": "fast",
                         "error": "no time left in the section's box"})  # fmt: skip
            continue
        known = [r["flops"] for r in rows if r.get("flops") and
                 (r["arch"], r["procedure"]) == (arch, procedure)]  # fmt: skip
        rows.append(_measure_boxed(s, work, arch, procedure, "fast", limit,
                                   known[0] if known else None))  # fmt: skip
        box.save({"rows": rows, "speedups": _speedups(rows, s.device == "cuda")})
    return {"rows": rows, "speedups": _speedups(rows, s.device == "cuda")}


def _status(run_dir: Path) -> dict[str, Any]:
    return RunDir(run_dir).read_status() or {}


def section_train(s: Settings, box: Box, work: Path) -> dict[str, Any]:
    """A real run through the CLI: train for s.train_s seconds, SIGTERM (expect exit 75 and a
    checkpoint), resume the same command (expect it to continue from that checkpoint), stop
    it again; then the bit check of CUDA-graph replays against eager execution."""
    results = work / "results"
    cmd = [sys.executable, "-m", "reproduce", "train", "--arch", "baseline", "--procedure",
           "wgan-gp", "--dim", str(s.dim), "--batch-size", str(s.batch), "--iters", "1000000",
           "--device", s.device, "--results", str(results), "--no-eval", "--no-progress",
           "--log-every", "10", "--sample-every", "0", "--checkpoint-every", "0",
           "--name", "train-check"]  # fmt: skip
    run_dir = results / "train-check"
    stints: list[dict[str, Any]] = []
    total = box.left()
    for stint, seconds in enumerate((s.train_s, min(5.0, s.train_s))):
        with open(work / f"stint{stint}.log", "wb") as sink:
            proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=sink,
                                    stderr=subprocess.STDOUT)  # fmt: skip
        first = _status(run_dir).get("iteration", 0) if stint else 0
        started = None
        # the first stint leaves the resumed one at least 45% of the box
        reserve = max(15.0, 0.45 * total) if stint == 0 else 8.0
        while proc.poll() is None and box.left() > reserve:
            st = _status(run_dir)
            mine = st.get("state") == "running" and st.get("pid") == proc.pid
            if mine and st.get("iteration", 0) > first:
                started = started or time.monotonic()
                if time.monotonic() - started >= seconds:
                    break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | str = proc.wait(timeout=max(3.0, box.left() - 2))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = "no exit within the box after SIGTERM (killed)"
        st = _status(run_dir)
        stints.append({"exit": code, "state": st.get("state"), "iteration": st.get("iteration"),
                       "it_per_s": st.get("it_per_s"), "engine": st.get("engine"),
                       "data_placement": st.get("data_placement"),
                       "setup_seconds": st.get("setup_seconds"), "tflops": st.get("tflops"),
                       "mfu": st.get("mfu")})  # fmt: skip
    rd = RunDir(run_dir)
    log = rd.log_file.read_text() if rd.log_file.is_file() else ""
    from ..rundir import checkpoint

    found = checkpoint.list_checkpoints(rd.checkpoints_dir)
    ckpts = sorted(c.iteration for c in found)
    exact_resume = (bitchecks.resume_bit_check(s, rd) if ckpts
                    else {"identical": False, "error": "none"})  # fmt: skip
    # checked: removed, so that a GPU loan's output is results, not 2 x 111 MiB of weights
    ckpt_bytes = sum(f.stat().st_size for f in rd.checkpoints_dir.rglob("*") if f.is_file())
    shutil.rmtree(rd.checkpoints_dir, ignore_errors=True)
    first_stop = stints[0]["iteration"]
    resumed = bool(first_stop) and f"resumed from ckpt-{first_stop:08d} at iteration" in log
    checks = {
        "sigterm_exit_75": all(x["exit"] == 75 for x in stints),
        "checkpoint_at_each_stop": all(x["iteration"] in ckpts for x in stints),
        "resumed_from_the_checkpoint": resumed,
        "continued_after_resume": (stints[1]["iteration"] or 0) > (first_stop or 0),
        "device_resident_data": stints[0]["data_placement"] == "device",
        "resume_bit_exact": exact_resume["identical"],
        "engine": stints[0]["engine"],
    }
    out: dict[str, Any] = {"stints": stints, "checkpoints": ckpts, "checks": checks,
                           "resume_vs_uninterrupted": exact_resume,
                           "checkpoint_bytes_removed": ckpt_bytes}  # fmt: skip
    out["graphs_vs_eager"] = bitchecks.graphs_bit_check(s) if s.device == "cuda" else "needs CUDA"
    ok = all(v for k, v in checks.items() if k != "engine")
    out["ok"] = ok and (s.device != "cuda" or (out["graphs_vs_eager"]["identical"]
                                                and checks["engine"] == "cuda-graphs"))  # fmt: skip
    return out


def section_inception(s: Settings, box: Box, work: Path) -> dict[str, Any]:
    import torch

    from architectures import get_pair

    from ..data.datasets import load_demo
    from ..evaluation import metrics

    device = _device(s)
    given = os.environ.get("REPRODUCE_INCEPTION_WEIGHTS")
    if given:
        path, which = Path(given), "REPRODUCE_INCEPTION_WEIGHTS"
    else:
        make = importlib.import_module("tests.inception").make_random_inception_weights
        path, which = make(work / "inception.pth"), "random (tests/inception.py)"
    weights = metrics.InceptionWeights(str(path), metrics.sha256_file(path), staged=False)
    torch.manual_seed(0)
    G = get_pair("baseline").generator(s.dim, "tf-same").to(device)
    reference = metrics.reference_images(load_demo().images, s.is_samples)
    protocol = metrics.Protocol(num_samples=s.is_samples, reference_samples=s.is_samples)
    t0 = time.perf_counter()
    images = metrics.generate_uint8(G, s.is_samples, s.batch, seed=1, device=device)
    _sync(s)
    t1 = time.perf_counter()
    scores = metrics.inception_metrics(images, weights, protocol, device, reference=reference)
    _sync(s)
    t2 = time.perf_counter()
    if not given:
        path.unlink()  # 100 MB of random weights: not worth bringing back from a GPU loan
    return {"samples": s.is_samples, "reference_images": len(reference), "weights": which,
            "generate_s": t1 - t0, "score_s": t2 - t1, "images_per_s": s.is_samples / (t2 - t1),
            "inception_score": scores.get("inception_score_mean"),
            "scores": {k: v for k, v in scores.items() if isinstance(v, (int, float))}}  # fmt: skip


def section_packing(s: Settings, box: Box, work: Path) -> dict[str, Any]:
    """tests/benchmarks/test_bench_packing.py for each of s.pack_archs (a pytest run each, so
    that one that overruns the box keeps the other's results)."""
    from . import bench

    env = {**child_env(), "BENCH_DEVICE": s.device, "BENCH_DIM": str(s.dim),
           "BENCH_BATCH": str(s.batch), "BENCH_PACK_ITERS": str(s.pack_iters),
           "BENCH_PACK_K": ",".join(map(str, s.pack_k))}  # fmt: skip
    rows: list[dict[str, Any]] = []
    runs: dict[str, int | str] = {}
    for i, arch in enumerate(s.pack_archs):
        out = work / f"packing-{arch}.json"
        cmd = [sys.executable, "-m", "pytest", "tests/benchmarks/test_bench_packing.py", "-m",
               "benchmark_suite", "-n", "0", "-q", "-p", "no:cacheprovider", "-k",
               f"test_packing and {arch}-", f"--benchmark-json={out}"]  # fmt: skip
        share = (box.left() - 5) / (len(s.pack_archs) - i)
        try:
            runs[arch] = subprocess.run(cmd, cwd=REPO, env=env, timeout=max(1.0, share)).returncode
        except subprocess.TimeoutExpired:
            runs[arch] = f"timeout after {share:.0f} s"
        if out.is_file():
            rows += bench.packing_rows(bench.load_results(out, "packing"))
    return {"pytest_exit": runs, "rows": rows, "iters_per_cell": s.pack_iters}


def section_projection(
    s: Settings, box: Box, work: Path, earlier: dict[str, Any]
) -> dict[str, Any]:
    """Device-hours of the paper matrix (28 cells x 200,000 generator iterations) per mode.
    Exact mode: each cell measured (step-times' cells, then one cell per architecture, then
    the rest, while the box allows), else scaled from its FLOPs by the seconds per FLOP of a
    measured cell of its architecture (or, failing that, the median of all measured cells).
    Fast mode: the measured fast cells; the others exact x the median measured fast/exact.
    FLOPs are counted (on the CPU, seconds for a ResNet-101 cell) only for cells that are
    not measured, and only while the box allows: a cell neither measured nor counted is left
    out, and the matrix's hours with it."""
    from architectures import PAIRS

    from ..gan.procedures import PROCEDURES
    from ..training import flops

    cells = [(a, p) for a in PAIRS for p in PROCEDURES]
    steps = ((earlier.get("step-times") or {}).get("rows")) or []
    exact = {(r["arch"], r["procedure"]): r["ms"] / 1000 for r in _ok(steps, "exact")}
    fast = {(r["arch"], r["procedure"]): r["ms"] / 1000 for r in _ok(steps, "fast")}
    cost = {(r["arch"], r["procedure"]): r["flops"] for r in steps if r.get("flops")}
    how = {c: "measured (step-times)" for c in exact}
    box.save(project(cells, cost, exact, fast, how))
    # one WGAN-GP cell per architecture first: every row then scales from its own network
    order = [(a, "wgan-gp") for a in PAIRS] + cells
    spent: list[float] = []  # seconds of each measurement (warm-up, rounds, its FLOP count)
    counted: list[float] = []  # seconds of each FLOP count alone
    for c in dict.fromkeys(order):
        if c in exact:
            continue
        # a cell's measurement or count takes at most about twice the longest so far
        if len(spent) < s.extra_cells and box.left() - 5 >= (2 * max(spent) if spent else 0):
            t0 = time.monotonic()
            row = measure_step(s, *c, "exact", max(1, min(s.rounds, 5)), cost.get(c))
            exact[c], cost[c], how[c] = row["ms"] / 1000, row["flops"], "measured"
            spent.append(time.monotonic() - t0)
        elif c not in cost and box.left() - 5 >= (2 * max(counted) if counted else 0):
            t0 = time.monotonic()
            cost[c] = flops.iteration_cost(_config(s, *c)).flops
            counted.append(time.monotonic() - t0)
        else:
            continue
        box.save(project(cells, cost, exact, fast, how))
    out = project(cells, cost, exact, fast, how)
    out["measure_s"], out["count_s"] = round(sum(spent), 1), round(sum(counted), 1)
    return out


def project(
    cells: list[tuple[str, str]],
    cost: dict[tuple[str, str], int],
    measured: dict[tuple[str, str], float],
    fast: dict[tuple[str, str], float],
    measured_how: dict[tuple[str, str], str],
) -> dict[str, Any]:
    """The projection from the cells measured so far (seconds per generator iteration)."""
    exact, how = dict(measured), dict(measured_how)
    per_flop = {a: exact[(a, p)] / cost[(a, p)] for (a, p) in exact}  # the last measured of a row
    fallback = statistics.median(exact[c] / cost[c] for c in exact) if exact else None
    rows: list[dict[str, Any]] = []
    for c in cells:
        if c not in cost:
            continue  # neither measured nor counted within the box
        if c not in exact:
            rate = per_flop.get(c[0], fallback)
            if rate is None:
                continue
            exact[c] = cost[c] * rate
            how[c] = "scaled from FLOPs" + ("" if c[0] in per_flop else " (median of all)")
        rows.append({"arch": c[0], "procedure": c[1], "exact_s": exact[c], "exact": how[c],
                     "gflop": cost[c] / 1e9})  # fmt: skip
    ratios = [fast[c] / exact[c] for c in fast if c in exact]
    ratio = statistics.median(ratios) if ratios else None
    for r in rows:
        cell = (r["arch"], r["procedure"])
        if cell in fast:
            r["fast_s"], r["fast"] = fast[cell], "measured (step-times)"
        elif ratio is not None:
            r["fast_s"], r["fast"] = r["exact_s"] * ratio, "exact x median fast/exact"
    whole = len(rows) == 28
    hours = {
        "exact": sum(r["exact_s"] for r in rows) * PAPER_ITERS / 3600 if whole else None,
        "fast": sum(r["fast_s"] for r in rows) * PAPER_ITERS / 3600
        if whole and all("fast_s" in r for r in rows)
        else None,
    }
    return {
        "rows": rows,
        "hours": hours,
        "fast_over_exact": ratio,
        "measured_exact": sum(r["exact"].startswith("measured") for r in rows),
        "cells": 28,
    }


SECTION_FUNCS: dict[str, Callable[..., dict[str, Any]]] = {
    "cuda-tests": section_cuda_tests, "step-times": section_step_times, "train": section_train,
    "inception": section_inception, "packing": section_packing,
}  # fmt: skip


def child(name: str, params_path: Path, result: Path, deadline: float) -> int:
    params = json.loads(params_path.read_text())
    raw = params["settings"]
    s = Settings(**{**raw, "pack_k": tuple(raw["pack_k"]), "sections": tuple(raw["sections"])})
    work = params_path.parent / name if name != "measure" else params_path.parent
    box = Box(deadline, result)
    if faults.active(HANG_FAULT, name):
        time.sleep(10**6)
    import torch

    torch.manual_seed(0)
    try:
        if name == "measure":
            arch, procedure, kind = params["cell"]
            data = measure_step(s, arch, procedure, kind, s.rounds, params.get("flops"))
        elif name == "projection":
            data = section_projection(s, box, work, params["earlier"])
        else:
            data = SECTION_FUNCS[name](s, box, work)
        code = 0
    except Exception as e:  # recorded; the orchestrator goes on with the next section
        data = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        traceback.print_exc()
        code = 1
    box.save(data)
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.speed.sections")
    p.add_argument("--child", required=True)
    p.add_argument("--params", required=True, type=Path)
    p.add_argument("--result", required=True, type=Path)
    p.add_argument("--deadline", required=True, type=float)
    a = p.parse_args(argv)
    return child(a.child, a.params, a.result, a.deadline)


if __name__ == "__main__":
    sys.exit(main())
