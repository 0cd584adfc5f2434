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
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

REPO = Path(__file__).resolve().parents[2]
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
                   compile_cap_s=150.0 if gpu else 120.0, train_s=15.0,
                   is_samples=50_000 if gpu else 64, pack_iters=10 if gpu else 2,
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


class Stopped(Exception):
    """gpu-check was asked to stop (SIGTERM, SIGINT): every process it started is gone."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found, then theirs), from /proc: the
    sections run in their own sessions, so a signal to gpu-check's group misses them."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat_line = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat_line.rsplit(")", 1)[1].split()[1])  # the name may hold spaces
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _stop(signum: int, _frame: Any) -> None:
    """The whole tree is collected before anything is killed (a killed parent's children
    would be handed to init and lost from it), then killed, then gpu-check stops."""
    for pid in descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    raise Stopped(signum)


@contextlib.contextmanager
def stoppable() -> Any:
    """SIGTERM and SIGINT kill every process gpu-check started and raise Stopped."""
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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


def tail(path: Path, n: int = 15) -> str:
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
    status = boxed([sys.executable, "-m", "reproduce.speed.sections", "--child", name, "--params",
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
        row["error"] = (row.get("result") or {}).get("error") or tail(log)
    return row


def environment(s: Settings) -> dict[str, Any]:
    import torch

    from ..evaluation import metrics
    from ..training import flops

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
    with stoppable():
        try:
            _sections(s, out, echo, report, todo, start)
        except Stopped as e:  # what was measured is kept; the section running is recorded
            report["stopped_by"] = str(e)
            report["wall_seconds"] = round(time.monotonic() - start, 1)
            save(report, out)
            raise
    return report


def _sections(s: Settings, out: Path, echo: Callable[[str], None], report: dict[str, Any],
              todo: list[str], start: float) -> None:  # fmt: skip
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


def save(report: dict[str, Any], out: Path) -> None:
    for name, text in ((FILE_JSON, json.dumps(report, indent=1) + "\n"),
                       (FILE_MD, markdown(report))):  # fmt: skip
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)


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
