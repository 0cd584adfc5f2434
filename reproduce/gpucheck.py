"""``python -m reproduce gpu-check``: every CUDA path of the project, measured in one prepared
run that fits a short GPU loan (ten minutes of one GPU, never seen before).

Six sections, in order of value, each in its own process with its own time box (a share of
what is left of ``--budget``, so time a section does not use goes to the later ones). A
section that overruns its box is killed and recorded as a timeout; one that fails records its
error; either way the script goes on with the next. ``gpu-check.json`` and ``gpu-check.md``
are rewritten after every section, so a run killed from outside keeps what it measured.

1. ``cuda-tests``: the CUDA-only tests (pytest marker ``cuda``), pass/fail per test;
2. ``step-times``: one generator iteration of three cells as the plain eager port
   (tests/reference.py), in exact mode (CUDA graphs on a GPU) and in fast mode (torch.compile;
   compile time reported separately and capped), with speed-ups, TFLOP/s and MFU;
3. ``train``: a real ``train`` of baseline WGAN-GP through the CLI (device-resident data, the
   default engine, checkpoint and exit 75 on SIGTERM, resume), and the bit check that CUDA
   graph replays equal eager execution at the same settings;
4. ``inception``: IS, FID and KID of generated samples (50,000 on a GPU) through
   torch-fidelity, and its throughput;
5. ``packing``: the packing benchmark (1, 2, 4 concurrent cells) of two architectures;
6. ``projection``: the paper matrix's device-hours in exact and fast mode, per cell measured
   where the box allows and otherwise scaled from its FLOPs (each cell says which).

The same script runs on a CPU (``--device cpu`` or ``BENCH_DEVICE=cpu``, width 16) and, with
``--smoke``, in seconds per section (the test suite runs that form).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import faults
from .errors import UserError

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("cuda-tests", "step-times", "train", "inception", "packing", "projection")
# each section's share of the time left when it starts (the remaining sections' shares
# renormalised), sized from what each does on a GPU
SHARE = {"cuda-tests": 0.15, "step-times": 0.32, "train": 0.15, "inception": 0.12,
         "packing": 0.13, "projection": 0.13}  # fmt: skip
STEP_CELLS = (("baseline", "dcgan"), ("baseline", "wgan-gp"), ("resnet101", "wgan-gp"))
PACK_ARCHS = ("baseline", "resnet101")
PAPER_ITERS = 200_000
# the speed-up targets over the plain eager port (issue 21), GPU only
TARGETS = {("exact", "baseline", "wgan-gp"): 2.0, ("exact", "resnet101", "wgan-gp"): 3.0,
           ("fast", "baseline", "dcgan"): 4.0, ("fast", "baseline", "wgan-gp"): 4.0,
           ("fast", "resnet101", "wgan-gp"): 4.0}  # fmt: skip
HANG_FAULT = "gpu-check-hang"  # REPRODUCE_FAULTS=gpu-check-hang=SECTION (the time-box test)
FILE_JSON, FILE_MD = "gpu-check.json", "gpu-check.md"


@dataclass(frozen=True)
class Settings:
    device: str  # "cuda" or "cpu"
    dim: int
    batch: int
    budget_s: float
    smoke: bool
    rounds: int  # timed iterations per step-time measurement
    compile_cap_s: float  # per fast-mode cell: compiling plus its timed rounds
    train_s: float  # seconds of training before the SIGTERM
    is_samples: int
    pack_iters: int
    pack_k: tuple[int, ...]
    pack_archs: tuple[str, ...]
    step_cells: int  # how many of STEP_CELLS step-times measures
    fast_cells: int  # how many of those are compiled and timed in fast mode
    extra_cells: int  # at most this many more cells measured by the projection
    threads: int | None  # CPU threads of every process (smoke: 1, as under the test suite's
    # two workers, where more threads than free cores slow OpenMP down tens of times)
    sections: tuple[str, ...]

    @classmethod
    def make(cls, device: str, smoke: bool, budget: float | None, dim: int | None,
             batch: int | None, sections: tuple[str, ...]) -> Settings:  # fmt: skip
        gpu = device == "cuda"
        if smoke:  # every code path once, at the smallest sizes: two cells (a compile does not
            # fit: its row shows the cap instead), the packing of one architecture
            return cls(device, dim or 8, batch or 4, budget or 240.0, True, rounds=1,
                       compile_cap_s=3.0, train_s=2.0, is_samples=20, pack_iters=2,
                       pack_k=(1, 2), pack_archs=("baseline",), step_cells=2, fast_cells=1,
                       extra_cells=1, threads=1, sections=sections)  # fmt: skip
        return cls(device, dim or (64 if gpu else 16), batch or (64 if gpu else 16),
                   budget or 540.0, False, rounds=20 if gpu else 3,
                   compile_cap_s=150.0 if gpu else 120.0, train_s=30.0,
                   is_samples=50_000 if gpu else 64, pack_iters=50 if gpu else 2,
                   pack_k=(1, 2, 4) if gpu else (1, 2),
                   pack_archs=PACK_ARCHS if gpu else ("baseline", "mlp-generator"),
                   step_cells=len(STEP_CELLS),
                   fast_cells=len(STEP_CELLS),
                   extra_cells=28, threads=None, sections=sections)  # fmt: skip


# --------------------------------------------------------------------------------------------
# the orchestrator
# --------------------------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def limit_threads(threads: int | None) -> None:
    """Every process started from here on uses ``threads`` CPU threads (torch reads
    OMP_NUM_THREADS; the packing benchmark's workers read BENCH_THREADS)."""
    if threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["BENCH_THREADS"] = str(threads)


def boxed(argv: list[str], timeout: float, log: Path, env: dict[str, str] | None = None) -> str:
    """Run ``argv`` in its own process group, output to ``log``; 'ok', 'error (exit N)' or
    'timeout'. On timeout the whole group is killed (a hung CUDA call or compile included)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env or child_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            code = proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout"
        finally:  # stray grandchildren (packing workers, pytest) go with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return "ok" if code == 0 else f"error (exit {code})"


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def run_section(name: str, s: Settings, out: Path, limit: float, earlier: dict[str, Any]) -> dict:
    work = out / "work" / name
    work.mkdir(parents=True, exist_ok=True)
    params = out / "work" / f"{name}.params.json"
    params.write_text(json.dumps({"settings": asdict(s), "earlier": earlier}))
    result = out / "work" / f"{name}.result.json"
    log = out / "logs" / f"{name}.log"
    t0 = time.monotonic()
    status = boxed([sys.executable, "-m", "reproduce.gpucheck", "--child", name, "--params",
                    str(params), "--result", str(result), "--deadline",
                    str(time.time() + limit)], limit, log)  # fmt: skip
    row: dict[str, Any] = {
        "status": status,
        "seconds": round(time.monotonic() - t0, 1),
        "limit_s": round(limit, 1),
        "log": str(log.relative_to(out)),
    }
    if result.is_file():
        row["result"] = json.loads(result.read_text())
    if status == "timeout":
        row["error"] = f"killed after its {limit:.0f} s time box" + (
            " (its result below is what it had measured by then)" if "result" in row else ""
        )
    elif status != "ok":
        row["error"] = (row.get("result") or {}).get("error") or _tail(log)
    return row


def environment(s: Settings) -> dict[str, Any]:
    import torch

    from . import flops, metrics

    def cmd(*argv: str) -> str | None:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=20,
                                  cwd=REPO).stdout.strip() or None  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return None

    gpu = s.device == "cuda"
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": flops.device_name(torch.device(s.device)),
        "driver": cmd("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")
        if gpu
        else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if gpu else None,
        "torch_fidelity": metrics.torch_fidelity_version(),
        "python": platform.python_version(),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "commit": cmd("git", "rev-parse", "--short", "HEAD"),
        "settings": asdict(s),
    }


def run(s: Settings, out: Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    start = time.monotonic()
    limit_threads(s.threads)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"environment": environment(s), "sections": {}}
    save(report, out)
    todo = [n for n in SECTIONS if n in s.sections]
    for i, name in enumerate(todo):
        left = s.budget_s - (time.monotonic() - start)
        shares = sum(SHARE[n] for n in todo[i:])
        limit = max(0.0, left * SHARE[name] / shares)
        row: dict[str, Any]
        if limit < 1.0:
            row = {"status": "skipped", "error": "no time left in --budget", "seconds": 0}
        else:
            echo(f"[{time.monotonic() - start:5.0f} s] {name} (time box {limit:.0f} s)")
            earlier = {n: r.get("result") for n, r in report["sections"].items()}
            row = run_section(name, s, out, limit, earlier)
        report["sections"][name] = row
        report["wall_seconds"] = round(time.monotonic() - start, 1)
        save(report, out)
        echo(f"[{time.monotonic() - start:5.0f} s] {name}: {row['status']}"
             + (f": {str(row['error']).splitlines()[-1]}" if row.get("error") else ""))  # fmt: skip
    return report


def save(report: dict[str, Any], out: Path) -> None:
    for name, text in ((FILE_JSON, json.dumps(report, indent=1) + "\n"),
                       (FILE_MD, markdown(report))):  # fmt: skip
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)


# --------------------------------------------------------------------------------------------
# the sections (each runs in a child process: ``python -m reproduce.gpucheck --child NAME``)
# --------------------------------------------------------------------------------------------
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


def _device(s: Settings) -> Any:
    import torch

    return torch.device(s.device)


def _sync(s: Settings) -> None:
    import torch

    if s.device == "cuda":
        torch.cuda.synchronize()


def _config(s: Settings, arch: str, procedure: str, mode: str = "exact") -> Any:
    from .config import resolve_run_config
    from .data import load_demo

    ds = load_demo()
    return resolve_run_config(
        {"arch": arch, "procedure": procedure, "dim": s.dim, "batch_size": s.batch,
         "iters": 10**6, "mode": mode},
        dataset=ds.kind, data_fingerprint=ds.fingerprint,
    )  # fmt: skip


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


def measure_step(s: Settings, arch: str, procedure: str, kind: str, rounds: int) -> dict[str, Any]:
    """Seconds per generator iteration of one cell: kind 'reference' (the plain eager port),
    'exact' (the default engine) or 'fast' (compiled: its first two iterations, which compile
    the critic and generator steps, are timed as compile_s)."""
    from . import flops
    from .data import load_demo
    from .train import Trainer, configure_numerics

    device = _device(s)
    cfg = _config(s, arch, procedure, "fast" if kind == "fast" else "exact")
    configure_numerics(device, cfg.mode)
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
    cost = flops.iteration_cost(cfg)
    peak = flops.peak_tflops(device, flops.mode_precision(cfg.mode))
    best = min(times)
    row.update(
        ms=1000 * best,
        median_ms=1000 * statistics.median(times),
        rounds=rounds,
        flops=cost.flops,
        peak_tflops=peak,
        **flops.utilisation(cost.flops, 1 / best, peak),
    )
    return row


def _measure_boxed(s: Settings, work: Path, arch: str, procedure: str, kind: str,
                   limit: float) -> dict[str, Any]:  # fmt: skip
    """measure_step in its own process with its own box (a compile that never ends)."""
    result = work / f"{arch}-{procedure}-{kind}.json"
    params = work / f"{arch}-{procedure}-{kind}.params.json"
    params.write_text(json.dumps({"settings": asdict(s), "cell": [arch, procedure, kind]}))
    t0 = time.monotonic()
    status = boxed([sys.executable, "-m", "reproduce.gpucheck", "--child", "measure",
                    "--params", str(params), "--result", str(result), "--deadline",
                    str(time.time() + limit)], limit, work / "measure.log")  # fmt: skip
    if status == "ok" and result.is_file():
        return json.loads(result.read_text())
    row = {"arch": arch, "procedure": procedure, "kind": kind,
           "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
    if status == "timeout":
        row["error"] = f"compiling and timing exceeded the {limit:.0f} s cap"
    else:
        row["error"] = _tail(work / "measure.log", 3) or status
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
        rows.append(_measure_boxed(s, work, arch, procedure, "fast", limit))
        box.save({"rows": rows, "speedups": _speedups(rows, s.device == "cuda")})
    return {"rows": rows, "speedups": _speedups(rows, s.device == "cuda")}


def _status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}


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
    log = (run_dir / "log.txt").read_text() if (run_dir / "log.txt").is_file() else ""
    from . import checkpoint

    ckpts = sorted(c.iteration for c in checkpoint.list_checkpoints(run_dir / "checkpoints"))
    first_stop = stints[0]["iteration"]
    resumed = bool(first_stop) and f"resumed from ckpt-{first_stop:08d} at iteration" in log
    checks = {
        "sigterm_exit_75": all(x["exit"] == 75 for x in stints),
        "checkpoint_at_each_stop": all(x["iteration"] in ckpts for x in stints),
        "resumed_from_the_checkpoint": resumed,
        "continued_after_resume": (stints[1]["iteration"] or 0) > (first_stop or 0),
        "device_resident_data": stints[0]["data_placement"] == "device",
        "engine": stints[0]["engine"],
    }
    out: dict[str, Any] = {"stints": stints, "checkpoints": ckpts, "checks": checks}
    out["graphs_vs_eager"] = graphs_bit_check(s) if s.device == "cuda" else "needs CUDA"
    ok = all(v for k, v in checks.items() if k != "engine")
    out["ok"] = ok and (s.device != "cuda" or (out["graphs_vs_eager"]["identical"]
                                                and checks["engine"] == "cuda-graphs"))  # fmt: skip
    return out


def graphs_bit_check(s: Settings, iters: int = 6) -> dict[str, Any]:
    """Baseline WGAN-GP at the section's width and batch: ``iters`` iterations replayed from
    CUDA graphs against eager execution, every weight and statistic compared to the bit."""
    import torch

    from .data import load_demo
    from .train import Trainer, configure_numerics

    device = _device(s)
    cfg = _config(s, "baseline", "wgan-gp")
    configure_numerics(device)
    runs = {}
    for graphs in (False, True):
        t = Trainer(cfg, load_demo(), device, data_placement="device", cuda_graphs=graphs)
        rows = [{k: v.item() for k, v in t.step().items()} for _ in range(iters)]
        runs[graphs] = (t, rows, t.steps.name, t.steps.note)
    (e, e_rows, _, _), (g, g_rows, engine, note) = runs[False], runs[True]
    differ = [
        f"{net}.{n}"
        for net, a, b in (("G", e.G, g.G), ("D", e.D, g.D))
        for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True)
        if not torch.equal(p, q)
    ]
    return {"iterations": iters, "engine": engine, "note": note, "stats_equal": e_rows == g_rows,
            "weights_differing": differ, "identical": engine == "cuda-graphs" and not differ
            and e_rows == g_rows}  # fmt: skip


def section_inception(s: Settings, box: Box, work: Path) -> dict[str, Any]:
    import torch

    from architectures import get_pair

    from . import metrics
    from .data import load_demo

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
    Fast mode: the measured fast cells; the others exact x the median measured fast/exact."""
    from architectures import PAIRS

    from . import flops
    from .procedures import PROCEDURES

    cells = [(a, p) for a in PAIRS for p in PROCEDURES]
    cost = {c: flops.iteration_cost(_config(s, *c)).flops for c in cells}
    steps = ((earlier.get("step-times") or {}).get("rows")) or []
    exact = {(r["arch"], r["procedure"]): r["ms"] / 1000 for r in _ok(steps, "exact")}
    fast = {(r["arch"], r["procedure"]): r["ms"] / 1000 for r in _ok(steps, "fast")}
    how = {c: "measured (step-times)" for c in exact}
    box.save(project(cells, cost, exact, fast, how))
    # one WGAN-GP cell per architecture first: every row then scales from its own network
    order = [(a, "wgan-gp") for a in PAIRS] + cells
    spent: list[float] = []
    for c in order:
        if c in exact or len(spent) >= s.extra_cells:
            continue
        guess = 2 * max(spent) if spent else 0.0  # a cell's measurement: warm-up and rounds
        if box.left() - 5 < guess:
            continue
        t0 = time.monotonic()
        exact[c] = measure_step(s, *c, "exact", max(1, min(s.rounds, 5)))["ms"] / 1000
        how[c] = "measured"
        spent.append(time.monotonic() - t0)
        box.save(project(cells, cost, exact, fast, how))
    return project(cells, cost, exact, fast, how)


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
            data = measure_step(s, arch, procedure, kind, s.rounds)
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


# --------------------------------------------------------------------------------------------
# the Markdown summary
# --------------------------------------------------------------------------------------------
def _f(v: Any, fmt: str = "{:,.2f}") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return fmt.format(v)


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    st = env["settings"]
    lines = [
        "# gpu-check", "",
        f"{env['device']}, driver {env.get('driver') or '-'}, torch {env['torch']}, CUDA "
        f"{env.get('cuda') or '-'}, cuDNN {env.get('cudnn') or '-'}, torch-fidelity "
        f"{env['torch_fidelity']}; {env['date']}; commit {env.get('commit') or '-'}.",
        f"Width {st['dim']}, batch {st['batch']}, budget {st['budget_s']:.0f} s"
        + (" (smoke form)" if st["smoke"] else "") + (f"; {report['wall_seconds']:.0f} s in all."
                                                        if "wall_seconds" in report else "."),
        "", "| section | status | seconds | time box (s) |", "|---|---|---|---|",
    ]  # fmt: skip
    secs = report["sections"]
    for name, row in secs.items():
        lines.append(f"| {name} | {row['status']} | {_f(row.get('seconds'), '{:.0f}')} | "
                     f"{_f(row.get('limit_s'), '{:.0f}')} |")  # fmt: skip
    for name, row in secs.items():
        res = row.get("result") or {}
        lines += ["", f"## {name}", ""]
        if row.get("error"):
            lines += ["```", str(row["error"])[-1500:], "```", ""]
        if name in RENDER and res and "error" not in res:
            lines += RENDER[name](res)
    return "\n".join(lines) + "\n"


def _md_cuda_tests(r: dict[str, Any]) -> list[str]:
    c = r["counts"]
    out = [f"{c['passed']} passed, {c['failed']} failed, {c['error']} errors, "
           f"{c['skipped']} skipped (pytest exit {r['pytest_exit']}).", "",
           "| test | outcome | s |", "|---|---|---|"]  # fmt: skip
    out += [f"| {t['test']} | {t['outcome']}{': ' + t['message'] if t['message'] else ''} | "
            f"{t['seconds']:.1f} |" for t in r["tests"]]  # fmt: skip
    return out


def _md_step_times(r: dict[str, Any]) -> list[str]:
    x = {(u["arch"], u["procedure"], u["kind"]): u for u in r["speedups"]}
    out = ["| cell | kind | engine | ms / iteration | speed-up | target | TFLOP/s | MFU | "
           "compile s |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in r["rows"]:
        u = x.get((row["arch"], row["procedure"], row["kind"]), {})
        if "error" in row:
            out.append(f"| {row['arch']}, {row['procedure']} | {row['kind']} | {row['error']} "
                       "| - | - | - | - | - | - |")  # fmt: skip
            continue
        eng = row.get("engine", "") + (f" ({row['engine_note']})" if row.get("engine_note") else "")
        out.append(
            f"| {row['arch']}, {row['procedure']} | {row['kind']} | {eng} | {_f(row['ms'])} | "
            f"{_f(u.get('speedup'), '{:.2f}x')} | {_f(u.get('target'), '>= {:.0f}x')}"
            f"{'' if u.get('met') is None else (' met' if u['met'] else ' NOT met')} | "
            f"{_f(row.get('tflops'), '{:.3f}')} | {_f(row.get('mfu'), '{:.1%}')} | "
            f"{_f(row.get('compile_s'), '{:.1f}')} |"
        )
    return out


def _md_train(r: dict[str, Any]) -> list[str]:
    out = ["| stint | exit | state | iteration | it/s | engine | data | TFLOP/s | MFU |",
           "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for i, x in enumerate(r["stints"]):
        out.append(f"| {'first' if i == 0 else 'resumed'} | {x['exit']} | {x['state']} | "
                   f"{x['iteration']} | {_f(x['it_per_s'])} | {x['engine']} | "
                   f"{x['data_placement']} | {_f(x['tflops'], '{:.3f}')} | "
                   f"{_f(x['mfu'], '{:.1%}')} |")  # fmt: skip
    out += ["", "Checks: " + ", ".join(f"{k} {v}" for k, v in r["checks"].items()) + "."]
    g = r["graphs_vs_eager"]
    out.append("CUDA graphs vs eager: " + (g if isinstance(g, str) else
               f"{g['iterations']} iterations, engine {g['engine']}, identical {g['identical']}"
               + (f" (differing: {', '.join(g['weights_differing'][:5])})"
                  if g["weights_differing"] else "")) + ".")  # fmt: skip
    return out


def _md_inception(r: dict[str, Any]) -> list[str]:
    return [f"{r['samples']:,} samples (weights: {r['weights']}), {r['reference_images']:,} "
            f"reference images: generated in {r['generate_s']:.1f} s, IS/FID/KID in "
            f"{r['score_s']:.1f} s = {r['images_per_s']:,.0f} images/s."]  # fmt: skip


def _md_packing(r: dict[str, Any]) -> list[str]:
    from . import bench

    runs = ", ".join(f"{a}: {c}" for a, c in r["pytest_exit"].items())
    if not r["rows"]:
        return [f"no results (pytest exit {runs})"]
    return [
        "```",
        bench.packing_table(r["rows"]),
        "```",
        f"({r['iters_per_cell']} generator iterations per cell; pytest exit {runs})",
    ]


def _md_projection(r: dict[str, Any]) -> list[str]:
    h = r["hours"]
    out = [f"The paper matrix (28 cells x {PAPER_ITERS:,} iterations, one seed): exact "
           f"{_f(h['exact'], '{:,.1f}')} device-hours, fast {_f(h['fast'], '{:,.1f}')} "
           f"device-hours; {r['measured_exact']} of 28 cells measured in exact mode"
           + (", the others scaled from their FLOPs." if r["measured_exact"] < 28 else ".")
           + (f" Fast mode: median fast/exact {r['fast_over_exact']:.3f} where not measured."
              if r["fast_over_exact"] else ""), "",
           "| cell | GFLOP / iteration | exact s / iteration | how | fast s / iteration | how |",
           "|---|---|---|---|---|---|"]  # fmt: skip
    for x in r["rows"]:
        out.append(f"| {x['arch']}, {x['procedure']} | {x['gflop']:,.1f} | "
                   f"{_f(x['exact_s'], '{:.4f}')} | {x['exact']} | "
                   f"{_f(x.get('fast_s'), '{:.4f}')} | {x.get('fast', '-')} |")  # fmt: skip
    return out


RENDER: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "cuda-tests": _md_cuda_tests, "step-times": _md_step_times, "train": _md_train,
    "inception": _md_inception, "packing": _md_packing, "projection": _md_projection,
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------
def parse_sections(text: str | None) -> tuple[str, ...]:
    if not text:
        return SECTIONS
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for n in names:
        if n not in SECTIONS:
            choices = ", ".join(SECTIONS)
            raise UserError(f"--sections: unknown section {n!r} (choose from {choices})")
    return tuple(n for n in SECTIONS if n in names)


def settings_from_args(args: argparse.Namespace) -> Settings:
    import torch

    device = args.device or os.environ.get("BENCH_DEVICE") or "auto"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cuda", "cpu"):
        raise UserError(f"--device: must be cuda, cpu or auto, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device: CUDA requested but not available")
    if args.budget is not None and not 10 <= args.budget <= 7200:
        raise UserError(f"--budget: between 10 and 7200 seconds, got {args.budget:g}")
    for flag, v in (("--dim", args.dim), ("--batch-size", args.batch_size)):
        if v is not None and not 4 <= v <= 1024:
            raise UserError(f"{flag}: between 4 and 1024, got {v}")
    if args.dim is not None and args.dim % 4:
        raise UserError(f"--dim: must be a multiple of 4, got {args.dim}")
    s = Settings.make(device, args.smoke, args.budget, args.dim, args.batch_size,
                      parse_sections(args.sections))  # fmt: skip
    if not (REPO / "tests" / "benchmarks").is_dir():
        raise UserError(f"gpu-check: the test suite {REPO / 'tests'} is missing (use a checkout)")
    return s


def default_out(s: Settings) -> Path:
    return Path("results") / "gpu-check" / f"{time.strftime('%Y%m%d-%H%M%S')}-{s.device}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.gpucheck")
    p.add_argument("--child", required=True)
    p.add_argument("--params", required=True, type=Path)
    p.add_argument("--result", required=True, type=Path)
    p.add_argument("--deadline", required=True, type=float)
    a = p.parse_args(argv)
    return child(a.child, a.params, a.result, a.deadline)


if __name__ == "__main__":
    sys.exit(main())
