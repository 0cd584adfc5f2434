"""``python -m reproduce <command>``: parsing and up-front validation only.

Every user mistake is found here, before any file is written, and reported as one line on
stderr with exit code 2 (``UserError``). Exit codes: 0 done (completed, diverged, or nothing
to do), 1 failed (infrastructure or a bug), 2 bad input, 75 interrupted or busy (temporary:
run the same command again to resume).

Nothing heavy is imported at start-up: torch, the data and the training code are imported by
the functions that use them, so ``--help`` and ``status`` answer in well under two seconds
(``tests/test_cli_startup.py``). A refused ``train`` or ``matrix`` still loads torch and the
data before its config is checked.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from architectures import get_pair
from reproduce.procedures import ADAMS, get_procedure

from . import envvars, faults
from .config import (
    OPTIONS,
    OPTIONS_BY_KEY,
    SEED_MAX,
    RunConfig,
    RuntimeConfig,
    check_range,
    config_diff,
    load_config_file,
    resolve_run_config,
    resolve_runtime_config,
)
from .errors import UserError, did_you_mean
from .registry import Registry
from .results import RunDir, check_writable

if TYPE_CHECKING:
    import torch

    from .data import ImageDataset

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TEMPFAIL = 0, 1, 2, 75


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (and a suggestion for a misspelt flag)."""

    def error(self, message: str) -> NoReturn:
        m = re.match(r"unrecognized arguments: ([^\s=]+)(?:=(\S+)| (?!-)(\S+))?", message)
        if m:
            from .dispatch import SLURM_PROFILE_TYPES

            typed, key = m.group(1), m.group(1).lstrip("-").replace("-", "_")
            flags = [s for a in self._actions for s in a.option_strings]
            # a flag the typed one begins (--batch: --batch-size) before a look-alike (--arch)
            close = sorted((f for f in flags if f.startswith(typed)), key=len)[:1]
            close = close or difflib.get_close_matches(typed, flags, n=1)
            if "--slurm" in flags and key in SLURM_PROFILE_TYPES:
                value = m.group(2) or m.group(3) or "VALUE"
                message += f" (a SLURM profile key: --slurm {key}={value})"
            elif close:
                message += f" (did you mean {close[0]}?)"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


PROFILE_KEYS = {
    "data",
    "dim",
    "batch_size",
    "iters",
    "log_every",
    "sample_every",
    "checkpoint_every",
}


def _add_run_options(
    p: argparse.ArgumentParser, skip: frozenset[str] = frozenset(), matrix: bool = False
) -> None:
    run = p.add_argument_group("what to train (result-affecting: part of the run id)")
    rt = p.add_argument_group("how to run it (never part of the run id)")
    for opt in OPTIONS:
        if opt.key in skip:
            continue
        group = run if opt.section == "run" else rt
        default = "the procedure's" if opt.default is None and opt.section == "run" else opt.default
        if matrix and opt.key in PROFILE_KEYS:
            default = "from --profile"
        elif "default" in opt.help.lower():
            default = None  # the help says it already (once is enough)
        help_ = opt.help if default is None else f"{opt.help} (default: {default})"
        if opt.type is bool:
            group.add_argument(
                opt.flag,
                dest=opt.key,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_,
            )
        else:
            # choices are checked by config.check_keys, which suggests the closest valid one
            metavar = "{" + ",".join(opt.choices) + "}" if opt.choices else opt.key.upper()
            group.add_argument(
                opt.flag,
                dest=opt.key,
                type=opt.type,
                default=argparse.SUPPRESS,
                metavar=metavar,
                help=help_,
            )
    if "mode" not in skip:
        run.add_argument(
            "--fast",
            dest="mode",
            action="store_const",
            const="fast",
            default=argparse.SUPPRESS,
            help="the same as --mode fast",
        )
    p.add_argument(
        "--config",
        metavar="FILE",
        default=None,
        help="TOML or JSON file of option keys (a run's config.json works too); "
        "flags on the command line override it",
    )


def _add_dispatch_options(p: argparse.ArgumentParser) -> None:
    disp = p.add_argument_group("dispatch")
    disp.add_argument(
        "--executor",
        default="local",
        metavar="{local,slurm,debug}",
        help="local: subprocesses on this machine, one cell per visible GPU (or "
        "--workers at a time on CPU); slurm: one job array; debug: in-process "
        "(default: local)",
    )
    disp.add_argument(
        "--gpus",
        default=None,
        metavar="LIST",
        help="GPU indices for the local executor, e.g. 0,1,3, or 'none' (default: "
        "every visible GPU)",
    )
    disp.add_argument(
        "--cells-per-gpu",
        default="1",
        metavar="K",
        help="cells packed on each GPU at once (local executor): N for every architecture, "
        "ARCH=N,... per architecture (a bare N sets the rest), 'auto' for the recommendation "
        "of the newest packing benchmark of this GPU under RESULTS/benchmarks/, or a "
        "benchmark FILE.json (default: 1)",
    )
    disp.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="cells at once on a machine without GPUs; CPU threads are split "
        "between them (default: one per CPU core for the demo profile, "
        "else 1)",
    )
    disp.add_argument(
        "--slurm-profile",
        default="default",
        metavar="NAME|FILE",
        help="TOML profile: a file, or a name under slurm/ (default: default)",
    )
    disp.add_argument(
        "--slurm",
        dest="slurm_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key of the SLURM profile, e.g. --slurm partition=gpu (repeatable)",
    )
    disp.add_argument(
        "--wait",
        action="store_true",
        help="slurm: wait for the submitted cells and print the summary",
    )
    disp.add_argument(
        "--dry-run",
        action="store_true",
        help="print every cell with its run id and state, and exit",
    )


SUBPARSERS: dict[str, Parser] = {}


def build_parser() -> Parser:
    parser = Parser(
        prog="reproduce",
        allow_abbrev=False,  # a misspelt or shortened flag must fail, never guess
        description="Reproduction harness for 'Improved Training of Wasserstein GANs' "
        "(Gulrajani et al., 2017).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    train = sub.add_parser(
        "train",
        allow_abbrev=False,
        help="train one architecture x procedure cell (resumes if interrupted)",
        description="Train one cell. Re-running the same command resumes from the newest "
        "checkpoint; a completed or diverged run is never trained again.",
    )
    SUBPARSERS["train"] = train
    _add_run_options(train)
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="resume this run directory (its config.json gives the settings)",
    )

    matrix = sub.add_parser(
        "matrix",
        allow_abbrev=False,
        help="train every cell of an experiment (the 7x4 LSUN matrix), each exactly once",
        description="Cross architectures x procedures (x seeds), skip finished cells, resume "
        "interrupted ones, and dispatch the rest to local CPUs/GPUs, SLURM or in-process.",
    )
    SUBPARSERS["matrix"] = matrix
    sel = matrix.add_argument_group("which cells")
    sel.add_argument("--experiment", default="lsun", help="named experiment (default: lsun)")
    sel.add_argument(
        "--profile",
        default="paper",
        help="named settings: 'paper' (200k iterations, batch 64, width 64; needs "
        "--data) or 'demo' (built-in data, small and fast) (default: paper)",
    )
    sel.add_argument(
        "--arch",
        dest="archs",
        nargs="+",
        metavar="ARCH",
        default=None,
        help="architectures (default: all seven)",
    )
    sel.add_argument(
        "--procedure",
        dest="procedures",
        nargs="+",
        metavar="PROC",
        default=None,
        help="procedures (default: all four)",
    )
    sel.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        metavar="SEED",
        default=[0],
        help="seeds, one replicate of every cell per seed (default: 0)",
    )
    _add_run_options(matrix, skip=frozenset({"arch", "procedure", "seed", "name"}), matrix=True)
    _add_dispatch_options(matrix)

    fetch = sub.add_parser(
        "fetch-weights",
        allow_abbrev=False,
        help="download the Inception weights into a cache directory (run on a login node)",
        description="Stage torch-fidelity's TF-compatible Inception weights for machines without "
        "internet: download, record the sha256 beside the file, check that they load.",
    )
    SUBPARSERS["fetch-weights"] = fetch
    fetch.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="directory to put the file in (default: torch-fidelity's cache, "
        "$TORCH_HOME/hub/checkpoints)",
    )
    fetch.add_argument(
        "--url",
        default=None,
        help="download from this URL instead (a mirror, or file:///path); default: "
        "$REPRODUCE_INCEPTION_URL, else torch-fidelity's release URL",
    )

    prep = sub.add_parser(
        "prepare-data",
        allow_abbrev=False,
        help="turn the LSUN LMDB (or a folder of images) into the 64x64 training cache, once",
        description="Decode, convert to RGB, resize the shorter side to 64 (antialiased bicubic) "
        "and centre-crop 64x64 every image of an LSUN LMDB or an image folder, in parallel, into "
        "a memory-mappable uint8 cache with a manifest. Interrupted, it resumes when re-run.",
    )
    SUBPARSERS["prepare-data"] = prep
    prep.add_argument(
        "--source",
        required=True,
        metavar="PATH",
        help="an LSUN LMDB directory (holding data.mdb) or a folder of images",
    )
    prep.add_argument("--out", required=True, metavar="PATH", help="the cache directory to write")
    prep.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="use only the first N images in key order (default: all)",
    )
    prep.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="hold out this fraction as a validation split, chosen by a hash of "
        "each image's key (Figure 5a; default: 0)",
    )
    prep.add_argument(
        "--max-skipped",
        type=float,
        default=prepare_defaults().max_skipped,
        metavar="F",
        help="reject the source when more than this fraction of its "
        "images is unreadable or under 64 px (default: %(default)s)",
    )
    prep.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="decoding processes (default: one per available CPU core)",
    )
    prep.add_argument(
        "--shard-rows",
        type=int,
        default=prepare_defaults().shard_rows,
        metavar="N",
        help="images per unit of work and of resumption (default: %(default)s)",
    )
    prep.add_argument("--no-progress", dest="progress", action="store_false",
                      help="no progress bar")  # fmt: skip

    bench = sub.add_parser(
        "bench",
        allow_abbrev=False,
        help="run the speed benchmarks (pytest-benchmark), save them, compare with a baseline",
        description="Run tests/benchmarks (one full generator iteration of every cell, the "
        "Inception-score evaluation, the data path), save the pytest-benchmark JSON under "
        "RESULTS/benchmarks/, print times with TFLOP/s and MFU, and with --compare print the "
        "per-benchmark ratio to a saved run, failing (exit 1) above --fail-above.",
    )
    SUBPARSERS["bench"] = bench
    bench.add_argument(
        "-k",
        dest="select",
        default=None,
        metavar="EXPR",
        help="only benchmarks matching this pytest -k expression",
    )
    bench.add_argument(
        "--compare",
        default=None,
        metavar="BASELINE.json",
        help="a saved benchmark JSON to compare with",
    )
    bench.add_argument(
        "--fail-above",
        default="10%",
        metavar="PCT",
        help="fail when a benchmark is this much slower than the baseline (default: 10%%)",
    )
    bench.add_argument(
        "--results",
        default="results",
        metavar="DIR",
        help="results directory; the JSON goes to DIR/benchmarks/NAME.json",
    )
    bench.add_argument("--name", default=None,
                       help="name of the saved run (default: a timestamp)")  # fmt: skip

    report = sub.add_parser(
        "report",
        allow_abbrev=False,
        help="tables, plots and an HTML page for every run of a results directory",
        description="Aggregate every run directory into pandas frames and write the 7x4 "
        "Inception-score table and the throughput table (Markdown, LaTeX booktabs, CSV), "
        "seaborn plots (PNG, PDF) and index.html.",
    )
    SUBPARSERS["report"] = report
    report.add_argument("--results", default="results", help="results directory (default: results)")
    report.add_argument(
        "--out", default=None, metavar="DIR", help="where to write (default: RESULTS/report)"
    )
    report.add_argument(
        "--strict",
        action="store_true",
        help="fail on a corrupt or truncated file instead of skipping it with a warning",
    )

    figures = sub.add_parser(
        "figures",
        allow_abbrev=False,
        help="regenerate the paper's figures (runs what they need first)",
        description="Draw the paper's figures into RESULTS/figures: fig1a, fig1b (fig1: both), "
        "fig2, fig3, fig5a (default: all). Runs each figure needs and that are not done yet "
        "are trained first through the matrix machinery (each exactly once, resumable).",
    )
    SUBPARSERS["figures"] = figures
    figures.add_argument("names", nargs="*", metavar="NAME", help="figures (default: all)")
    figures.add_argument(
        "--profile",
        default="demo",
        help="demo: CPU minutes (Figure 1), "
        "Figures 2 and 5a on the demo data; paper: the paper's settings "
        "(default: demo)",
    )
    figures.add_argument(
        "--cifar",
        default=None,
        metavar="PATH",
        help="Figure 3: the CIFAR-10 "
        "python archive (cifar-10-python.tar.gz or cifar-10-batches-py)",
    )
    figures.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    figures.add_argument(
        "--toy-iters",
        type=int,
        default=None,
        metavar="N",
        help="iterations of Figure 1's toy runs (default: from --profile)",
    )
    _add_run_options(
        figures, skip=frozenset({"arch", "procedure", "seed", "name", "mode"}), matrix=True
    )
    _add_dispatch_options(figures)

    status = sub.add_parser(
        "status",
        allow_abbrev=False,
        help="the 7x4 grid of every matrix in a results directory, with each cell's state",
        description="Show each matrix (per seed) as the paper's 7x4 grid: pending, queued, "
        "running (progress, it/s, ETA), partial, completed, diverged, failed. Safe to run while "
        "a matrix is training, locally or on SLURM.",
    )
    SUBPARSERS["status"] = status
    status.add_argument("--results", default="results", help="results directory (default: results)")

    check = sub.add_parser(
        "gpu-check",
        allow_abbrev=False,
        help="one prepared, time-boxed run of every CUDA path (for a short GPU loan)",
        description="Run six time-boxed sections in order of value: the CUDA-only tests, "
        "step times (plain eager port vs exact vs fast), a real train/SIGTERM/resume run with "
        "the CUDA-graph bit check, Inception-score throughput, packing, and the paper "
        "matrix's projected device-hours. Writes OUT/gpu-check.json and OUT/gpu-check.md "
        "after every section. A section that overruns its box is killed and recorded; the "
        "others still run.",
    )
    SUBPARSERS["gpu-check"] = check
    check.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where to write (default: results/gpu-check/TIMESTAMP-DEVICE)",
    )
    check.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wall time for all sections (default: 540; --smoke: 240)",
    )
    check.add_argument(
        "--device",
        default=None,
        choices=("auto", "cuda", "cpu"),
        help="default: $BENCH_DEVICE, else cuda when available",
    )
    check.add_argument(
        "--dim",
        type=int,
        default=None,
        help="network width (default: 64 on a GPU, 16 on a CPU, 8 with --smoke)",
    )
    check.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch size (default: 64 on a GPU, 16 on a CPU, 4 with --smoke)",
    )
    check.add_argument(
        "--sections",
        default=None,
        metavar="A,B",
        help="only these sections (default: all six, in their order)",
    )
    check.add_argument("--smoke", action="store_true",
                       help="the test suite's form: tiny sizes, seconds per section")  # fmt: skip
    return parser


# --------------------------------------------------------------------------------------------
# validation (nothing is written here)
# --------------------------------------------------------------------------------------------
@dataclass
class TrainPlan:
    cfg: RunConfig
    rt: RuntimeConfig
    dataset: ImageDataset
    run_dir: RunDir
    device: torch.device


def resolve_device_arg(name: str) -> torch.device:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"--device: unknown device {name!r}; use cpu, cuda, cuda:N or auto"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device: CUDA requested but not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(
                f"--device: {name} requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible"
            )
    elif dev.type != "cpu":
        raise UserError(f"--device: unsupported device type {dev.type!r}; use cpu or cuda")
    return dev


def checkpoint_bytes(cfg: RunConfig) -> int:
    """Size of one checkpoint: fp32 weights plus optimiser slots (Adam 2, RMSProp 1)."""
    import torch

    pair = get_pair(cfg.arch)
    with torch.device("meta"):
        nets = (
            pair.generator(cfg.dim, cfg.padding, cfg.mlp_width),
            pair.critic(cfg.dim, cfg.critic_norm, cfg.padding),
        )
        n = sum(p.numel() for net in nets for p in net.parameters())
    slots = 2 if cfg.optimizer in ADAMS else 1
    return 4 * n * (1 + slots) + 64 * 1024  # plus RNG state, noise and pickling overhead


def check_space(cfg: RunConfig, rt: RuntimeConfig, base: Path, run_dir: RunDir) -> None:
    """Room for the checkpoints still to be written: a new checkpoint is written before the
    oldest kept one is deleted, so a run holds up to --keep-checkpoints + 1 at once; those
    already on disk (a resume) need no more space."""
    from .checkpoint import list_checkpoints

    have = min(len(list_checkpoints(run_dir.checkpoints_dir)), rt.keep_checkpoints)
    more = rt.keep_checkpoints + 1 - have
    need = checkpoint_bytes(cfg) * more
    free = shutil.disk_usage(base).free
    if free < need:
        on_disk = f" ({have} already on disk)" if have else ""
        raise UserError(
            f"--results: {base} has {free:,} bytes free; {more} more checkpoints of this run"
            f"{on_disk} need {need:,}"
        )


def _given(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_config_file(args.config))
    values.update({k: v for k, v in vars(args).items() if k in OPTIONS_BY_KEY})
    return values


def with_weights(rt: RuntimeConfig) -> RuntimeConfig:
    """Resolve and verify the Inception weights when the run evaluates (UserError otherwise);
    the checksum goes with the run so that each job checks it again when it starts."""
    if not rt.eval_enabled:
        return rt
    if rt.judge_kind == "demo":  # built here once (offline), not by every cell at once
        from .judge import resolve_judge

        judge, how = resolve_judge(lambda msg: print(msg, file=sys.stderr, flush=True))
        if how != "cached":
            print(f"demo judge {how}: {judge.path}", file=sys.stderr, flush=True)
        return rt
    from .metrics import resolve_weights

    weights = resolve_weights(rt.inception_weights, allow_download=True)
    return dataclasses.replace(rt, inception_weights=weights.path, inception_sha256=weights.sha256)


def check_resolution(cfg: RunConfig, dataset: Any, data: str) -> None:
    need = get_pair(cfg.arch).resolution
    if dataset.resolution != need:
        raise UserError(
            f"--data: {data} holds {dataset.resolution}x{dataset.resolution} images; "
            f"architecture {cfg.arch} needs {need}x{need}"
        )


def plan_train(args: argparse.Namespace) -> TrainPlan:
    given = _given(args)
    if args.resume:
        given = _merge_resume(Path(args.resume), given)
    rt = resolve_runtime_config(given)
    device = resolve_device_arg(rt.device)
    from .data import load_dataset

    dataset = load_dataset(rt.data)
    cfg = resolve_run_config(given, dataset=dataset.kind, data_fingerprint=dataset.fingerprint)
    check_resolution(cfg, dataset, rt.data)
    if len(dataset) < cfg.batch_size:
        raise UserError(
            f"--data: {rt.data} has {len(dataset)} usable images, fewer than one batch "
            f"(--batch-size {cfg.batch_size})"
        )
    results = Path(rt.results)
    run_dir = RunDir(results / (rt.name or cfg.run_id))
    if args.resume:
        run_dir = RunDir(Path(args.resume))
    linked = run_dir.linked_files()
    if linked:
        raise UserError(
            f"--results: {run_dir.path} holds symbolic links ({', '.join(linked[:3])}); a run's "
            "files are never written through links: replace them with the files"
        )
    if run_dir.exists():
        try:
            doc = run_dir.read_config()
            old = doc["config"]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{run_dir.config_file} is unreadable; move the run away") from None
        diff = config_diff(old, cfg.to_dict())
        if diff:
            raise UserError(
                f"{run_dir.path} holds a run with another config (refusing to resume): "
                + "; ".join(diff)
            )
        started_as = doc.get("config_hash")
        if isinstance(started_as, str) and started_as != cfg.hash():
            flag = "--resume" if args.resume else "--results"
            raise UserError(
                f"{flag}: {run_dir.config_file} was edited after the run started (its config "
                f"hashes to {cfg.hash()}, the run's checkpoints to {started_as}); restore it, "
                "or train the edited config as a new run"
            )
    base = check_writable(run_dir.path, "--results")
    if (run_dir.read_status() or {}).get("state") not in ("completed", "diverged"):
        check_space(cfg, rt, base, run_dir)
        rt = with_weights(rt)
    return TrainPlan(cfg, rt, dataset, run_dir, device)


def _merge_resume(path: Path, given: dict[str, Any]) -> dict[str, Any]:
    """Settings for ``--resume RUN_DIR``: the run's own, with runtime flags from the command
    line; a result-affecting flag that contradicts the run is refused, listing differences."""
    run = RunDir(path)
    if not run.exists():
        raise UserError(f"--resume: {path} is not a run directory (no config.json)")
    try:
        doc = run.read_config()
        saved = {k: v for k, v in doc["config"].items() if k in OPTIONS_BY_KEY}
        runtime = {k: v for k, v in doc["runtime"].items() if k in OPTIONS_BY_KEY}
    except (OSError, ValueError, KeyError):
        raise UserError(f"--resume: {run.config_file} is unreadable") from None
    from . import checkpoint

    if not any(
        checkpoint.verify(c.path) is not None
        for c in checkpoint.list_checkpoints(run.checkpoints_dir)
    ):
        raise UserError(f"--resume: {path} has no valid checkpoint to resume from")
    conflicts = [
        f"{OPTIONS_BY_KEY[k].flag}: run has {saved[k]!r}, command line says {v!r}"
        for k, v in given.items()
        if OPTIONS_BY_KEY[k].section == "run" and k in saved and saved[k] != v
    ]
    if conflicts:
        raise UserError(f"--resume: refusing to change the run's config: {'; '.join(conflicts)}")
    runtime.update({k: v for k, v in given.items() if OPTIONS_BY_KEY[k].section == "runtime"})
    runtime["results"], runtime["name"] = str(path.parent), path.name
    return {**saved, **runtime}


@dataclass
class MatrixPlan:
    experiment: str
    configs: list[RunConfig]
    run_dirs: list[Path]
    states: list[Any]  # matrix.CellState
    rt: RuntimeConfig
    dataset: ImageDataset
    executor: str
    results: Path
    pool: Any  # dispatch.LocalPool (local)
    slurm: Any  # dispatch.SlurmProfile (slurm)


EXECUTORS: Registry[str] = Registry("executor")  # name -> what it does
EXECUTORS.register("local", "cells as processes on this machine's GPUs or CPU cores")
EXECUTORS.register("slurm", "a SLURM job array through submitit, one task per cell")
EXECUTORS.register("debug", "in this process, one cell after another")


MAX_WORKERS = 1024  # cells at once on one machine's CPUs


def check_executor(name: str) -> None:
    if name not in EXECUTORS:
        raise UserError(f"--executor: {EXECUTORS.unknown(name)}")


def _parse_gpus(text: str | None) -> list[int]:
    """--gpus: a comma list, 'none', or (default) every visible GPU."""
    import torch

    if text is None:
        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    if text.strip().lower() in ("", "none"):
        return []
    try:
        gpus = [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(
            f"--gpus: expected a comma-separated list of GPU indices, got {text!r}"
        ) from None
    if len(set(gpus)) != len(gpus) or min(gpus) < 0:
        raise UserError(f"--gpus: indices must be distinct and >= 0, got {text!r}")
    if not torch.cuda.is_available() and not faults.active("fake-gpus"):
        raise UserError(
            f"--gpus: torch sees no CUDA GPU on this machine, got {text!r}; leave --gpus out "
            "(or give 'none') to train on the CPU"
        )
    if torch.cuda.is_available() and max(gpus) >= torch.cuda.device_count():
        raise UserError(
            f"--gpus: this machine shows {torch.cuda.device_count()} GPU(s) (indices from 0), "
            f"got {text!r}"
        )
    from .dispatch import visible_entries

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = len(visible_entries(visible)) if visible is not None else None
    if count is not None and max(gpus) >= count:
        raise UserError(
            f"--gpus: indices count the GPUs of CUDA_VISIBLE_DEVICES={visible!r} "
            f"({count} of them, from 0), got {text!r}"
        )
    return gpus


def parse_packing(
    text: str, gpus: Sequence[int], executor: str, results: Path, sizes: set[tuple[int, int]]
) -> Any:
    """--cells-per-gpu -> dispatch.Packing: N; ARCH=N,... (a bare N sets the rest); 'auto'
    (the newest packing benchmark of this GPU model under RESULTS/benchmarks/, measured at the
    cells' width and batch size ``sizes``); or a benchmark FILE.json."""
    from .dispatch import Packing

    flag = "--cells-per-gpu"
    text = str(text).strip()
    if text == "1":
        return Packing()
    if executor != "local":
        raise UserError(f"{flag}: packs cells of the local executor, not the {executor} one")
    if not gpus:
        raise UserError(
            f"{flag}: no GPU to pack cells on (none visible, or --gpus none); "
            "on a CPU, --workers sets how many cells run at once"
        )
    if text == "auto" or text.endswith(".json"):
        return _packing_from_benchmark(text, gpus, results, sizes)
    default, per_arch = 1, {}
    for item in (x.strip() for x in text.split(",")):
        name, _, value = item.rpartition("=")
        try:
            k = int(value)
        except ValueError:
            raise UserError(
                f"{flag}: expected N, ARCH=N,..., auto or a benchmark FILE.json, got {item!r}"
            ) from None
        if k < 1:
            raise UserError(f"{flag}: must be at least 1, got {item}")
        if not name:
            default = k
            continue
        try:
            get_pair(name)
        except KeyError as e:
            raise UserError(f"{flag}: {e.args[0]}") from None
        per_arch[name] = k
    return Packing(default, tuple(sorted(per_arch.items())))


def _packing_from_benchmark(
    text: str, gpus: Sequence[int], results: Path, sizes: set[tuple[int, int]]
) -> Any:
    """The recommendation of a packing benchmark of this GPU model (the name CUDA reports; any
    GPU where CUDA is absent) at the width and batch size of every cell."""
    import torch

    from .bench import recommended_packing
    from .dispatch import Packing

    flag = "--cells-per-gpu"
    here = torch.cuda.get_device_name(gpus[0]) if torch.cuda.is_available() else None

    def mismatch(advice: Any) -> str | None:
        if here is not None and advice.device != here:
            return f"was measured on {advice.device}, not on this machine's {here}"
        if sizes and sizes != {(advice.dim, advice.batch)}:
            want = ", ".join(f"width {d}, batch {b}" for d, b in sorted(sizes))
            return f"was measured at width {advice.dim}, batch {advice.batch}; the cells: {want}"
        return None

    def packing(advice: Any, path: Path) -> Any:
        source = f"{path}: {advice.device}, width {advice.dim}, batch {advice.batch}"
        return Packing(1, tuple(sorted(advice.cells.items())), source)

    if text != "auto":
        advice = recommended_packing(Path(text), flag)
        if advice is None:
            raise UserError(f"{flag}: {text} holds no packing benchmark of one GPU and size")
        why = mismatch(advice)
        if why:
            raise UserError(f"{flag}: {text} {why}")
        return packing(advice, Path(text))
    folder = results / "benchmarks"
    files = sorted(folder.glob("*.json"), key=lambda f: f.stat().st_mtime, reverse=True)
    for f in files:
        try:
            advice = recommended_packing(f, flag)
        except UserError:
            continue  # not a benchmark file (or an unfinished one)
        if advice is not None and mismatch(advice) is None:
            return packing(advice, f)
    of = f" of {here}" if here else " of a GPU"
    at = " and ".join(f"width {d}, batch {b}" for d, b in sorted(sizes))
    if len(sizes) == 1:  # the size to measure at; no size known: the benchmark's own default
        [(d, b)] = sizes
        env = f"BENCH_DIM={d} BENCH_BATCH={b} "
    else:
        env = "BENCH_DIM=.. BENCH_BATCH=.. " if sizes else ""
    raise UserError(
        f"{flag} auto: no packing benchmark{of}{' at ' + at if at else ''} under {folder}; "
        f"measure one with `{env}python -m reproduce bench -k packing "
        f"--results {results}`, or give N or ARCH=N,..."
    )


def plan_matrix(args: argparse.Namespace) -> MatrixPlan:
    from .dispatch import LocalPool, load_slurm_profile
    from .experiments import Selection
    from .matrix import cell_state, expand, get_profile

    check_executor(args.executor)
    from .experiments import get_experiment

    profile = get_profile(args.profile)
    try:
        exp_options = get_experiment(args.experiment).options
    except KeyError as e:
        raise UserError(f"--experiment: {e.args[0]}") from None
    given = {**profile.options, **exp_options, **_given(args)}
    if profile.needs_data and "data" not in _given(args):
        raise UserError(
            f"--data: profile {args.profile!r} trains on LSUN bedrooms; give --data CACHE "
            "(made by prepare-data), or use --profile demo for the built-in data"
        )
    for flag, names, registry in (
        ("--arch", args.archs, get_pair),
        ("--procedure", args.procedures, None),
    ):
        for name in names or ():
            try:
                get_pair(name) if registry else get_procedure(name)
            except KeyError as e:
                raise UserError(f"{flag}: {e.args[0]}") from None
    for seed in args.seeds:
        if seed < 0:
            raise UserError(f"--seeds: must be >= 0, got {seed}")
        check_range("--seeds", seed, SEED_MAX)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers: must be at least 1, got {args.workers}")
    if args.workers is not None:
        check_range("--workers", args.workers, MAX_WORKERS)
    workers = args.workers or (
        os.cpu_count() or 1 if profile.cpu_workers == 0 else profile.cpu_workers
    )
    rt = resolve_runtime_config(given)
    if args.executor != "slurm":  # a login node need not have the GPUs the jobs will get
        resolve_device_arg(rt.device)
    from .data import load_dataset

    dataset = load_dataset(rt.data)
    shared = {k: v for k, v in given.items() if OPTIONS_BY_KEY[k].section == "run"}
    sel = Selection(archs=args.archs, procedures=args.procedures, seeds=args.seeds)
    configs = expand(
        args.experiment, sel, shared, dataset=dataset.kind, data_fingerprint=dataset.fingerprint
    )
    if not configs:
        raise UserError("the selection holds no cells")
    for cfg in configs:
        check_resolution(cfg, dataset, rt.data)
    small = min(c.batch_size for c in configs)
    if len(dataset) < max(c.batch_size for c in configs):
        raise UserError(
            f"--data: {rt.data} has {len(dataset)} usable images, fewer than one "
            f"batch (--batch-size {small})"
        )
    results = Path(rt.results)
    gpus = _parse_gpus(args.gpus)
    sizes = {(c.dim, c.batch_size) for c in configs}
    packing = parse_packing(args.cells_per_gpu, gpus, args.executor, results, sizes)
    pool = LocalPool(gpus, packing, workers)
    run_dirs = [results / c.run_id for c in configs]
    for cfg, d in zip(configs, run_dirs, strict=True):
        rd = RunDir(d)
        if rd.exists():
            try:
                old = rd.read_config()["config"]
            except (OSError, ValueError, KeyError, TypeError):
                raise UserError(f"{rd.config_file} is unreadable; move the run away") from None
            if old != cfg.to_dict():
                raise UserError(
                    f"{d} holds a run with another config: "
                    + "; ".join(config_diff(old, cfg.to_dict()))
                )
    base = check_writable(results, "--results")
    slurm = None
    queue = None
    if args.executor == "slurm":
        from .dispatch import slurm_queue

        slurm, source = load_slurm_profile(args.slurm_profile, args.slurm_overrides)
        need = rt.checkpoint_every + slurm.signal_delay_s
        if slurm.time_limit_min * 60 <= need:
            raise UserError(
                f"{source}: time_limit {slurm.time_limit_min} min is shorter than one checkpoint "
                f"interval ({rt.checkpoint_every:.0f} s, --checkpoint-every) plus the signal delay "
                f"({slurm.signal_delay_s} s): a job could never save its progress"
            )
        if not args.dry_run:
            queue = slurm_queue()
            if queue is None:
                raise UserError(
                    "--executor slurm: no SLURM controller answers (squeue failed); "
                    "run this on a login node"
                )
    else:
        from .dispatch import slurm_queue

        queue = slurm_queue() if any((d / "submission.json").exists() for d in run_dirs) else None
    states = [cell_state(d, queue) for d in run_dirs]
    runnable = [c for c, s in zip(configs, states, strict=True) if s.runnable]
    if runnable and not args.dry_run:
        need = sum(checkpoint_bytes(c) for c in runnable) * (rt.keep_checkpoints + 1)
        free = shutil.disk_usage(base).free
        if free < need:
            raise UserError(
                f"--results: {base} has {free:,} bytes free; the checkpoints of "
                f"{len(runnable)} cells need {need:,}"
            )
    if runnable and not args.dry_run:
        rt = with_weights(rt)
    return MatrixPlan(
        args.experiment,
        configs,
        run_dirs,
        states,
        rt,
        dataset,
        args.executor,
        results,
        pool,
        slurm,
    )


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .train import StopFlag, train_run  # heavy imports after validation of the CLI

    plan = plan_train(args)
    stop = StopFlag()
    with stop.installed():
        out = train_run(plan.cfg, plan.rt, plan.dataset, plan.run_dir, plan.device, stop)
    line = f"{out.state}: {plan.run_dir.path} at iteration {out.iteration}/{plan.cfg.iters}"
    if out.state == "completed":
        secs = out.stats.get("train_seconds", 0.0)
        rate = f" ({plan.cfg.iters / secs:.2f} it/s)" if secs else ""
        print(f"{line}: {secs:.1f} s of training{rate}")
    else:
        print(f"{line}: {out.message}")
    if out.state in ("completed", "diverged", "already-completed", "already-diverged"):
        return EXIT_OK
    if out.state in ("interrupted", "busy", "lost"):
        return EXIT_TEMPFAIL
    return EXIT_FAILED


def cmd_matrix(args: argparse.Namespace) -> int:
    from . import dispatch
    from .matrix import cell_state, terminal_summary, write_manifest, write_summary

    plan = plan_matrix(args)
    if args.dry_run:
        _print_dry_run(plan)
        return EXIT_OK
    write_manifest(plan.results, plan.experiment, plan.configs, plan.run_dirs)
    cells = zip(plan.configs, plan.run_dirs, plan.states, strict=True)
    todo = [(c, d) for c, d, s in cells if s.runnable]
    skipped = len(plan.configs) - len(todo)
    print(f"{len(plan.configs)} cells: {len(todo)} to run, {skipped} skipped", end="")
    print(" (done, running or queued)")
    _print_packing(plan)
    specs = [dispatch.CellSpec(c.to_dict(), _cell_runtime(plan), str(d)) for c, d in todo]
    folder = dispatch.submission_folder(plan.results)
    if plan.executor == "slurm":
        if not specs:
            print("nothing to submit")
            return EXIT_OK
        _submit_slurm(plan, specs, todo, folder)
        if not args.wait:
            return EXIT_OK
        _wait_slurm(specs)
    elif specs and not _run_here(plan.executor, plan.pool, specs, folder):
        print(
            "interrupted: the running cells checkpointed; run the same command to resume",
            file=sys.stderr,
        )
        return EXIT_TEMPFAIL
    path, rows = write_summary(plan.results, plan.configs, plan.run_dirs)
    print(terminal_summary(rows), end="")
    print(f"summary with every column written to {path} (and .csv)")
    done = all(cell_state(d).state in ("completed", "diverged") for d in plan.run_dirs)
    return EXIT_OK if done else EXIT_FAILED


def _print_dry_run(plan: MatrixPlan) -> None:
    width = max(len(d.name) for d in plan.run_dirs)
    for d, st in zip(plan.run_dirs, plan.states, strict=True):
        extra = f" ({st.detail})" if st.detail else ""
        print(f"{d.name:<{width}}  {st.state}{extra}")
    n = sum(s.runnable for s in plan.states)
    print(
        f"{len(plan.configs)} cells, {n} to run ({plan.executor} executor); dry run: nothing done"
    )
    _print_packing(plan)
    if plan.executor == "local" and plan.pool.on_cpu and n:
        print(_cpu_estimate(plan))


def _cpu_estimate(plan: MatrixPlan) -> str:
    """Wall time of the runnable cells on this many CPU workers, largest first, from the
    per-cell costs measured on the reference machine (costs.py), plus evaluation."""
    from . import costs

    cells = []
    for cfg, st in zip(plan.configs, plan.states, strict=True):
        if not st.runnable:
            continue
        seconds = costs.STARTUP_SECONDS + costs.cell_seconds(cfg.to_dict())
        if plan.rt.eval_enabled:
            periodic = (cfg.iters - 1) // plan.rt.eval_interval(cfg.iters)
            seconds += costs.EVAL_SECONDS * periodic + costs.FINAL_EVAL_SECONDS
        cells.append(seconds)
    wall = costs.makespan(cells, plan.pool.cpu_workers)
    exact = all(
        c.dim == costs.REFERENCE_DIM and c.batch_size == costs.REFERENCE_BATCH for c in plan.configs
    )
    how = (
        "measured per cell"
        if exact
        else f"scaled from width {costs.REFERENCE_DIM}, batch {costs.REFERENCE_BATCH}: rough"
    )
    return (
        f"estimated wall time: {_hms(wall)} on {plan.pool.cpu_workers} CPU worker(s), largest "
        f"cells first ({sum(cells) / 3600:.2f} core-hours; {how} on the reference "
        f"{costs.REFERENCE_MACHINE}, costs.py)"
    )


def _hms(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def _print_packing(plan: MatrixPlan) -> None:
    if plan.executor == "local" and not plan.pool.on_cpu:
        from .dispatch import Packing

        if plan.pool.packing != Packing():
            print(plan.pool.packing.describe())


def _cell_runtime(plan: MatrixPlan) -> dict[str, Any]:
    """Runtime settings of each cell: threads split between CPU workers, or the SLURM cores."""
    threads = plan.rt.threads
    if threads is None and plan.executor == "local" and plan.pool.on_cpu:
        threads = max(1, (os.cpu_count() or 1) // plan.pool.cpu_workers)
    if threads is None and plan.executor == "slurm":
        threads = plan.slurm.cpus_per_task
    return {**plan.rt.to_dict(), "threads": threads}


def _submit_slurm(plan: MatrixPlan, specs: list[Any], todo: list[Any], folder: Path) -> None:
    from . import dispatch
    from .results import atomic_write_json
    from .train import run_config_document

    for cfg, d in todo:  # the config first, so that `status` shows queued cells
        if not RunDir(d).exists():
            doc = run_config_document(cfg, plan.rt, plan.dataset, d.name)
            atomic_write_json(RunDir(d).config_file, doc)
    jobs = dispatch.run_slurm(specs, plan.slurm, folder)
    array = jobs[0][1].split("_")[0]
    print(f"submitted {len(jobs)} cells as SLURM job array {array}; logs in {folder}")
    print(f"watch them with: python -m reproduce status --results {plan.results}")


def _wait_slurm(specs: list[Any], poll_s: float = 5.0) -> None:
    from .dispatch import slurm_queue
    from .matrix import cell_state

    pending = {Path(spec.run_dir) for spec in specs}
    while pending:
        time.sleep(poll_s)
        queue = slurm_queue()
        pending = {
            d for d in pending if cell_state(d, queue).state in ("queued", "running", "pending")
        }


def _run_here(executor: str, pool: Any, specs: list[Any], folder: Path) -> bool:
    """Run cells with the local or debug executor, printing progress; False if interrupted."""
    from . import dispatch
    from .live import LiveProgress

    total, done = len(specs), 0
    live = LiveProgress(every=0 if executor == "debug" else None)

    def event(kind: str, spec: Any, info: Any) -> None:
        nonlocal done
        if kind == "started":
            where = "CPU" if info.gpu is None else f"GPU {info.gpu}" + (
                f", {info.share} of it" if info.share < 1 else "")  # fmt: skip
            live.started(spec.run_id, Path(spec.run_dir))
            live.event(f"  start  {spec.run_id} ({where})")
            return
        done += 1
        msg = "" if info.get("state") == "completed" else f" ({info.get('message')})"
        live.finished(spec.run_id)
        live.event(f"  [{done}/{total}] {info.get('state')}: {spec.run_id}{msg}")

    if executor == "debug":
        for run_id, result in dispatch.run_debug(specs, folder).items():
            event("finished", next(s for s in specs if s.run_id == run_id), result)
        return True

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)  # like Ctrl-C: stop the cells, then exit
    # A matrix started in the background by a script inherits SIGINT as ignored (Python then
    # leaves it ignored): a SIGINT sent to it must still stop it, as Ctrl-C does.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with live:
            dispatch.run_local(specs, pool, folder, on_event=event)
    except KeyboardInterrupt:
        return False
    return True


def cmd_status(args: argparse.Namespace) -> int:
    from .dispatch import slurm_queue
    from .matrix import cell_state, grid_text, load_manifests, waits_on_slurm

    results = Path(args.results)
    if not results.is_dir():
        raise UserError(f"--results: no such directory: {results}")
    manifests = load_manifests(results)
    if not manifests:
        print(f"no matrix in {results} (start one with: python -m reproduce matrix ...)")
        return EXIT_OK
    uses_slurm = any(waits_on_slurm(results / c["run_id"]) for m in manifests for c in m["cells"])
    queue = slurm_queue() if uses_slurm else None
    for m in manifests:
        shared = m.get("shared", {})
        desc = ", ".join(
            f"{k}={shared[k]}"
            for k in ("dim", "batch_size", "iters", "hparams", "dataset")
            if k in shared
        )
        for seed in sorted({c["seed"] for c in m["cells"]}):
            cells = {}
            counts: dict[str, int] = {}
            for c in m["cells"]:
                if c["seed"] != seed:
                    continue
                st = cell_state(results / c["run_id"], queue)
                cells[(c["arch"], c["procedure"])] = (st, _status_score(results / c["run_id"]))
                counts[st.state] = counts.get(st.state, 0) + 1
            summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            print(f"matrix {m['matrix_id']} ({m['experiment']}; {desc}), seed {seed}: {summary}")
            print(grid_text(cells))
            print()
    if uses_slurm and queue is None:
        print("note: squeue did not answer; queued SLURM cells may show as pending")
    return EXIT_OK


def _status_score(run_dir: Path) -> str | None:
    """The newest score of a cell for the status grid (``IS 6.12`` or ``judge 5.43 7/8``),
    and its verdict once it has one."""
    from .results import IS_MEAN, latest_metrics

    latest = latest_metrics(run_dir) or {}
    bits = []
    if isinstance(latest.get(IS_MEAN), int | float):
        name = "judge" if latest.get("judge") == "demo-judge" else "IS"
        bits.append(f"{name} {latest[IS_MEAN]:.2f}")
        if "modes_covered" in latest:
            bits.append(f"{latest['modes_covered']}/{latest['modes_total']}")
    try:
        verdict = json.loads((run_dir / "verdict.json").read_text()).get("verdict")
    except (OSError, ValueError, AttributeError):
        verdict = None
    if isinstance(verdict, str) and verdict not in ("incomplete", "diverged", "failed"):
        bits.append(verdict)
    return " ".join(bits) or None


def cmd_fetch_weights(args: argparse.Namespace) -> int:
    from .metrics import default_cache_dir, stage_weights

    cache = Path(args.cache) if args.cache else default_cache_dir()
    check_writable(cache, "--cache")
    try:
        weights = stage_weights(cache, args.url)
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot download the Inception weights: {type(e).__name__}: {e}") from None
    print(f"staged {weights.path}")
    print(f"sha256 {weights.sha256}")
    print(
        f"use it with: --inception-weights {weights.path}  (or export "
        f"REPRODUCE_INCEPTION_WEIGHTS={weights.path})"
    )
    return EXIT_OK


def prepare_defaults() -> Any:
    from .prepare import Options

    return Options()


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from .prepare import Options, iter_summary, prepare

    opts = Options(
        limit=args.limit,
        val_fraction=args.val_fraction,
        max_skipped=args.max_skipped,
        workers=prepare_defaults().workers if args.workers is None else args.workers,
        progress=args.progress,
        shard_rows=args.shard_rows,
    )
    t0 = time.monotonic()
    done = prepare(Path(args.source), Path(args.out), opts)
    if done.resumed_shards < 0:
        print(f"{done.path} is already prepared from this source with these options")
    else:
        print(f"prepared {done.path} in {time.monotonic() - t0:.1f} s")
    for line in iter_summary(done.manifest):
        print(line)
    print(f"train on it with: --data {done.path}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    threshold = bench.parse_threshold(args.fail_above)
    base = bench.load_results(Path(args.compare), "--compare") if args.compare else None
    if not bench.SUITE.is_dir():
        raise UserError(f"bench: the benchmark suite {bench.SUITE} is missing (use a checkout)")
    name = args.name or bench.default_name()
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise UserError(f"--name: not a valid file name: {name!r}")
    out_dir = Path(args.results) / "benchmarks"
    check_writable(out_dir, "--results")
    out = out_dir / f"{name}.json"
    if out.exists():
        raise UserError(f"--name: {out} exists; choose another name")
    out_dir.mkdir(parents=True, exist_ok=True)
    code = bench.run_suite(out.absolute(), args.select)  # pytest runs in the checkout
    if not out.is_file():
        print(f"bench: pytest exited {code} without results", file=sys.stderr)
        return EXIT_FAILED
    new = bench.load_results(out, "bench")
    print(bench.results_table(new))
    derived = bench.derived_tables(new)
    if derived:
        print()
        print(derived)
    print(f"saved {out}")
    if base is None:
        return EXIT_OK if code == 0 else EXIT_FAILED
    rows, failed = bench.compare(new, base, threshold)
    print()
    print(bench.ratio_table(rows, threshold))
    if failed:
        print(f"{len(failed)} benchmark(s) slower than the baseline by more than "
              f"{threshold:.0%}: {', '.join(r.name for r in failed)}")  # fmt: skip
        return EXIT_FAILED
    return EXIT_OK if code == 0 else EXIT_FAILED


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build

    results = Path(args.results)
    if not results.is_dir():
        raise UserError(f"--results: no such directory: {results}")
    out = Path(args.out) if args.out else results / "report"
    check_writable(out, "--out")
    rep = build(
        results, out, strict=args.strict, progress=lambda s: print(f"  {s} ...", flush=True)
    )
    for w in rep.warnings:
        print(f"warning: {w}", file=sys.stderr)
    counts = rep.summary["status"].map(lambda s: str(s).split()[0]).value_counts()
    print(f"{len(rep.summary)} runs (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")")
    print(f"wrote {len(rep.files)} files to {out}; open {out / 'index.html'}")
    return EXIT_OK


def _figure_matrix_args(args: argparse.Namespace, need: Any, results: Path) -> argparse.Namespace:
    """The arguments of a ``matrix`` invocation for a figure's cells (same validation, same
    dispatch), with the figure's options under the ones given on the command line."""
    ns = argparse.Namespace(
        experiment=need.experiment, profile=need.profile, archs=need.archs,
        procedures=need.procedures, seeds=[args.seed], executor=args.executor, gpus=args.gpus,
        cells_per_gpu=args.cells_per_gpu, workers=args.workers,
        slurm_profile=args.slurm_profile, slurm_overrides=args.slurm_overrides,
        dry_run=args.dry_run, config=None,
    )  # fmt: skip
    for k, v in {**need.options, "results": str(results)}.items():
        setattr(ns, k, v)
    return ns


def cmd_figures(args: argparse.Namespace) -> int:
    from . import dispatch, figures
    from .matrix import cell_state, write_manifest
    from .toy import ToyConfig

    if args.profile == "quick":
        raise UserError("--profile: 'quick' is now called 'demo', as in `matrix --profile demo`")
    if args.profile not in ("demo", "paper"):
        hint = did_you_mean(args.profile, ("demo", "paper"))
        raise UserError(f"--profile: unknown profile {args.profile!r}{hint}; valid: demo, paper")
    if args.toy_iters is not None and args.toy_iters < 1:
        raise UserError(f"--toy-iters: must be at least 1, got {args.toy_iters}")
    if args.seed < 0:
        raise UserError(f"--seed: must be >= 0, got {args.seed}")
    check_executor(args.executor)
    names = figures.resolve_names(args.names)
    given = _given(args)
    results = Path(given.pop("results", "results"))
    data = given.pop("data", None)
    ctx = figures.Context(results, args.profile, args.seed, data, args.cifar, given,
                          args.toy_iters)  # fmt: skip
    check_writable(results, "--results")
    # plan everything first: every mistake fails before any run starts
    plans: dict[str, Any] = {}
    for name in names:
        need = figures.FIGURES[name].needs(ctx)
        if isinstance(need, figures.MatrixRuns):
            plans[name] = plan_matrix(_figure_matrix_args(args, need, results))
        else:
            plans[name] = need
    workers = args.workers or os.cpu_count() or 1
    gpus = _parse_gpus(args.gpus)
    sizes = {(c.dim, c.batch_size) for p in plans.values() if isinstance(p, MatrixPlan)
             for c in p.configs}  # fmt: skip
    pool = dispatch.LocalPool(
        gpus, parse_packing(args.cells_per_gpu, gpus, args.executor, results, sizes), workers
    )
    specs: dict[str, Any] = {}
    gan_plans = [p for p in plans.values() if isinstance(p, MatrixPlan)]
    toy_threads = max(1, (os.cpu_count() or 1) // workers) if pool.on_cpu else None
    for plan in plans.values():
        if isinstance(plan, MatrixPlan):
            rt = _cell_runtime(plan)
            for cfg, d, st in zip(plan.configs, plan.run_dirs, plan.states, strict=True):
                if st.runnable:
                    specs.setdefault(str(d), dispatch.CellSpec(cfg.to_dict(), rt, str(d)))
        else:
            for run in plan:
                d = results / run.run_id
                if cell_state(d).runnable:
                    runtime = {"checkpoint_every": 300.0, "threads": toy_threads}
                    specs.setdefault(str(d), dispatch.CellSpec(
                        run.config.to_dict(), runtime, str(d), kind="toy"))  # fmt: skip
    todo = list(specs.values())
    if args.dry_run:
        for name, plan in plans.items():
            dirs = plan.run_dirs if isinstance(plan, MatrixPlan) else [
                results / r.run_id for r in plan]  # fmt: skip
            for d in dirs:
                print(f"{name}  {d.name}  {cell_state(d).state}")
        print(f"{len(todo)} runs to train for {', '.join(names)}; dry run: nothing done")
        return EXIT_OK
    for plan in gan_plans:
        write_manifest(plan.results, plan.experiment, plan.configs, plan.run_dirs)
    print(f"figures {', '.join(names)}: {len(todo)} runs to train")
    folder = dispatch.submission_folder(results)
    if todo and args.executor == "slurm":
        slurm, _ = dispatch.load_slurm_profile(args.slurm_profile, args.slurm_overrides)
        jobs = dispatch.run_slurm(todo, slurm, folder)
        print(f"submitted {len(jobs)} runs as SLURM job array {jobs[0][1].split('_')[0]}")
        if not args.wait:
            print("run the same command again when they are done to draw the figures")
            return EXIT_OK
        _wait_slurm(todo)
    elif todo and not _run_here(args.executor, pool, todo, folder):
        print("interrupted: the runs checkpointed; run the same command to resume", file=sys.stderr)
        return EXIT_TEMPFAIL
    failed = []
    for name, plan in plans.items():
        fig = figures.FIGURES[name]
        if isinstance(plan, MatrixPlan):
            states = [cell_state(d).state for d in plan.run_dirs]
            ok = all(s in ("completed", "diverged") for s in states)
            runs: Any = plan.configs
        else:
            states = [cell_state(results / r.run_id).state for r in plan]
            ok = all(s == "completed" for s in states)
            runs = plan
            assert all(isinstance(r.config, ToyConfig) for r in plan)
        if not ok:
            bad = sorted({s for s in states if s not in ("completed", "diverged")})
            print(f"{name}: not drawn, some of its runs are {', '.join(bad)}", file=sys.stderr)
            failed.append(name)
            continue
        numbers = fig.draw(ctx, runs)
        path = figures.write_numbers(ctx, name, {"figure": fig.title, "profile": args.profile,
                                                 "seed": args.seed, **numbers})  # fmt: skip
        print(f"{name}: {path.with_suffix('.png')} (and .pdf; numbers in {path.name})")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from . import gpucheck

    s = gpucheck.settings_from_args(args)
    out = Path(args.out) if args.out else gpucheck.default_out(s)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out: {out} exists and is not an empty directory")
    check_writable(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check on {s.device} (width {s.dim}, batch {s.batch}, budget {s.budget_s:.0f} s) "
          f"-> {out}", flush=True)  # fmt: skip
    report = gpucheck.run(s, out, echo=lambda line: print(line, flush=True))
    bad = [n for n, r in report["sections"].items() if r["status"] != "ok"]
    print(f"wrote {out / gpucheck.FILE_JSON} and {out / gpucheck.FILE_MD}"
          + (f"; not ok: {', '.join(bad)}" if bad else ""))  # fmt: skip
    return EXIT_OK if not bad else EXIT_FAILED


COMMANDS = {
    "train": cmd_train,
    "matrix": cmd_matrix,
    "status": cmd_status,
    "fetch-weights": cmd_fetch_weights,
    "prepare-data": cmd_prepare_data,
    "bench": cmd_bench,
    "report": cmd_report,
    "figures": cmd_figures,
    "gpu-check": cmd_gpu_check,
}


MAX_NAME_BYTES, MAX_PATH_BYTES = 255, 4096  # Linux NAME_MAX and PATH_MAX


def _check_text_arguments(args: argparse.Namespace) -> None:
    """No text argument may hold a NUL byte (no file name can), and a path must be one the
    filesystem can hold: one line naming the flag instead of a traceback from deep inside."""
    sub = SUBPARSERS.get(args.command)
    flags = {a.dest: max(a.option_strings, key=len, default=a.dest)
             for a in (sub._actions if sub else [])}  # fmt: skip
    for key, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        flag = flags.get(key, "--" + key.replace("_", "-"))
        for v in values:
            if not isinstance(v, str):
                continue
            if "\0" in v:
                raise UserError(f"{flag}: contains a NUL byte")
            if len(v.encode()) > MAX_PATH_BYTES:
                raise UserError(f"{flag}: longer than {MAX_PATH_BYTES} bytes")
            if any(len(part.encode()) > MAX_NAME_BYTES for part in v.split("/")):
                raise UserError(f"{flag}: a path component is longer than {MAX_NAME_BYTES} bytes")
    if isinstance(getattr(args, "results", None), str) and not args.results.strip():
        raise UserError("--results: must name a directory (it is empty)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # report it from the subcommand's parser, which knows (and suggests) its flags
        sub = SUBPARSERS.get(args.command, parser)
        sub.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        _check_text_arguments(args)
        envvars.check_all()
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except UserError as e:
        print(f"reproduce {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`status | head`): no traceback; stdout to /dev/null so that
        # the interpreter's final flush does not raise again
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
