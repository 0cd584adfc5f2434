"""What several subcommands share: the parser class (one-line errors with a suggestion), the
option groups generated from ``options.OPTIONS``, the executors, exit codes, and the up-front
checks (device, disk space for checkpoints, data resolution, text arguments) that ``train``,
``matrix`` and ``figures`` run before anything is written."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from architectures import get_pair

from ..config.options import OPTIONS, OPTIONS_BY_KEY
from ..config.run import (
    RunConfig,
    config_diff,
    load_config_file,
)
from ..config.runtime import RuntimeConfig
from ..errors import UserError
from ..registry import Registry
from ..rundir.rundir import RunDir

if TYPE_CHECKING:
    pass


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TEMPFAIL = 0, 1, 2, 75


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (and a suggestion for a misspelt flag)."""

    def error(self, message: str) -> NoReturn:
        m = re.match(r"unrecognized arguments: ([^\s=]+)(?:=(\S+)| (?!-)(\S+))?", message)
        if m:
            from ..matrix.dispatch import SLURM_PROFILE_TYPES

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


def add_run_options(
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


def add_dispatch_options(p: argparse.ArgumentParser) -> None:
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
        "between them (default: one per CPU this process may use for the "
        "demo and claims profiles, else 1)",
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


def subcommand(sub: Any, name: str, help: str, description: str) -> Parser:
    """A subcommand's parser: no abbreviated flags (a misspelt or shortened flag must fail,
    never guess), registered in ``SUBPARSERS`` for its one-line errors."""
    parser: Parser = sub.add_parser(name, allow_abbrev=False, help=help, description=description)
    SUBPARSERS[name] = parser
    return parser


def add_results_dir(p: argparse.ArgumentParser) -> None:
    """--results of the commands that read a results directory (status, report)."""
    p.add_argument("--results", default="results", help="results directory (default: results)")


def results_dir(args: argparse.Namespace) -> Path:
    """The --results directory a reading command was given, which must exist."""
    results = Path(args.results)
    if not results.is_dir():
        raise UserError(f"--results: no such directory: {results}")
    return results


def given_options(args: argparse.Namespace) -> dict[str, Any]:
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
        from ..evaluation.judge import resolve_judge

        judge, how = resolve_judge(lambda msg: print(msg, file=sys.stderr, flush=True))
        if how != "cached":
            print(f"demo judge {how}: {judge.path}", file=sys.stderr, flush=True)
        return rt
    from ..evaluation.metrics import resolve_weights

    weights = resolve_weights(rt.inception_weights, allow_download=True)
    return dataclasses.replace(rt, inception_weights=weights.path, inception_sha256=weights.sha256)


@dataclasses.dataclass(frozen=True)
class Executor:
    """Where a command's cells run (``--executor``)."""

    name: str
    description: str
    slurm: bool = False  # SLURM array tasks: this machine need not have the jobs' GPUs
    in_process: bool = False  # in this process, one cell after another

    @property
    def local(self) -> bool:
        """Cells as processes of this machine's pool (GPU packing, CPU workers)."""
        return not (self.slurm or self.in_process)


EXECUTORS: Registry[Executor] = Registry("executor")
for _executor in (
    Executor("local", "cells as processes on this machine's GPUs or CPU cores"),
    Executor("slurm", "a SLURM job array through submitit, one task per cell", slurm=True),
    Executor("debug", "in this process, one cell after another", in_process=True),
):
    EXECUTORS.register(_executor.name, _executor)


def get_executor(name: str) -> Executor:
    try:
        return EXECUTORS[name]
    except KeyError as e:
        raise UserError(f"--executor: {e.args[0]}") from None


MAX_NAME_BYTES, MAX_PATH_BYTES = 255, 4096  # Linux NAME_MAX and PATH_MAX


def check_text_arguments(args: argparse.Namespace) -> None:
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


def check_space(cfg: RunConfig, rt: RuntimeConfig, base: Path, run_dir: RunDir) -> None:
    """Room for the checkpoints still to be written: a new checkpoint is written before the
    oldest kept one is deleted, so a run holds up to --keep-checkpoints + 1 at once; those
    already on disk (a resume) need no more space."""
    from ..rundir.checkpoint import checkpoint_bytes, list_checkpoints

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


def check_resolution(cfg: RunConfig, dataset: Any, data: str, data_given: bool) -> None:
    """The data's images are the size the architecture takes; the message blames what the
    user chose (--data when given, else --arch against the default data)."""
    need = get_pair(cfg.arch).resolution
    have = dataset.resolution
    if have == need:
        return
    if data_given:
        raise UserError(
            f"--data: {data} holds {have}x{have} images; "
            f"architecture {cfg.arch} needs {need}x{need}"
        )
    raise UserError(
        f"--arch: architecture {cfg.arch} needs {need}x{need} images, and the default data "
        f"({data}) holds {have}x{have}; give --data with {need}x{need} data"
        + (" (the CIFAR-10 python archive)" if cfg.arch == "cifar" else "")
    )


def check_enough_images(dataset: Any, batch_size: int, data: str) -> None:
    if len(dataset) < batch_size:
        raise UserError(
            f"--data: {data} has {len(dataset)} usable images, fewer than one batch "
            f"(--batch-size {batch_size})"
        )


def check_existing_run(run_dir: RunDir, cfg: RunConfig, refusing: str = "") -> dict[str, Any]:
    """A run directory that already holds a run must hold this config; its ``config.json``
    ({} when there is none yet)."""
    if not run_dir.exists():
        return {}
    try:
        doc = run_dir.read_config()
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{run_dir.config_file} is unreadable; move the run away") from None
    diff = config_diff(doc["config"], cfg.to_dict())
    if diff:
        msg = f"{run_dir.path} holds a run with another config{refusing}: "
        raise UserError(msg + "; ".join(diff))
    return doc
