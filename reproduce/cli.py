"""``python -m reproduce <command>``: parsing and up-front validation only.

Every user mistake is found here, before any file is written, and reported as one line on
stderr with exit code 2 (``UserError``). Exit codes: 0 done (completed, diverged, or nothing
to do), 1 failed (infrastructure or a bug), 2 bad input, 75 interrupted or busy (temporary:
run the same command again to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from architectures import get_pair

from . import checkpoint
from .config import (
    OPTIONS,
    OPTIONS_BY_KEY,
    RunConfig,
    RuntimeConfig,
    config_diff,
    load_config_file,
    resolve_run_config,
    resolve_runtime_config,
)
from .data import ImageDataset, load_dataset
from .errors import UserError
from .results import RunDir

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TEMPFAIL = 0, 1, 2, 75


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (and a suggestion for a misspelt flag)."""

    def error(self, message: str) -> NoReturn:
        m = re.match(r"unrecognized arguments: (\S+)", message)
        if m:
            flags = [s for a in self._actions for s in a.option_strings]
            close = difflib.get_close_matches(m.group(1).split("=")[0], flags, n=1)
            if close:
                message += f" (did you mean {close[0]}?)"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    run = p.add_argument_group("what to train (result-affecting: part of the run id)")
    rt = p.add_argument_group("how to run it (never part of the run id)")
    for opt in OPTIONS:
        group = run if opt.section == "run" else rt
        default = "the procedure's" if opt.default is None and opt.section == "run" else opt.default
        help_ = f"{opt.help} (default: {default})"
        if opt.type is bool:
            group.add_argument(opt.flag, dest=opt.key, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_)  # fmt: skip
        else:
            # choices are checked by config.check_keys, which suggests the closest valid one
            metavar = "{" + ",".join(opt.choices) + "}" if opt.choices else opt.key.upper()
            group.add_argument(opt.flag, dest=opt.key, type=opt.type, default=argparse.SUPPRESS,
                               metavar=metavar, help=help_)  # fmt: skip
    p.add_argument("--config", metavar="FILE", default=None,
                   help="TOML or JSON file of option keys (a run's config.json works too); "
                        "flags on the command line override it")  # fmt: skip


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
            raise UserError(f"--device: {name} requested but only {torch.cuda.device_count()} "
                            "CUDA device(s) are visible")  # fmt: skip
    elif dev.type != "cpu":
        raise UserError(f"--device: unsupported device type {dev.type!r}; use cpu or cuda")
    return dev


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists():
        p = p.parent
    return p


def check_writable(path: Path, flag: str) -> Path:
    """The nearest existing ancestor of ``path``, which must be a writable directory (probed
    with a temporary file that is removed at once)."""
    base = _nearest_existing(path)
    if not base.is_dir():
        raise UserError(f"{flag}: {base} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag}: cannot write to {base}: {e.strerror}") from None
    return base


def checkpoint_bytes(cfg: RunConfig) -> int:
    """Size of one checkpoint: fp32 weights plus optimiser slots (Adam 2, RMSProp 1)."""
    pair = get_pair(cfg.arch)
    with torch.device("meta"):
        nets = (
            pair.generator(cfg.dim, cfg.padding),
            pair.critic(cfg.dim, cfg.critic_norm, cfg.padding),
        )
        n = sum(p.numel() for net in nets for p in net.parameters())
    slots = 2 if cfg.optimizer == "adam" else 1
    return 4 * n * (1 + slots) + 64 * 1024  # plus RNG state, noise and pickling overhead


def check_space(cfg: RunConfig, rt: RuntimeConfig, base: Path) -> None:
    # a new checkpoint is written before the oldest kept one is deleted
    need = checkpoint_bytes(cfg) * (rt.keep_checkpoints + 1)
    free = shutil.disk_usage(base).free
    if free < need:
        raise UserError(
            f"--results: {base} has {free:,} bytes free; {rt.keep_checkpoints + 1} checkpoints "
            f"of this run need {need:,}"
        )


def _given(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_config_file(args.config))
    values.update({k: v for k, v in vars(args).items() if k in OPTIONS_BY_KEY})
    return values


def plan_train(args: argparse.Namespace) -> TrainPlan:
    given = _given(args)
    if args.resume:
        given = _merge_resume(Path(args.resume), given)
    rt = resolve_runtime_config(given)
    device = resolve_device_arg(rt.device)
    dataset = load_dataset(rt.data)
    cfg = resolve_run_config(given, dataset=dataset.kind, data_fingerprint=dataset.fingerprint)
    if len(dataset) < cfg.batch_size:
        raise UserError(
            f"--data: {rt.data} has {len(dataset)} usable images, fewer than one batch "
            f"(--batch-size {cfg.batch_size})"
        )
    results = Path(rt.results)
    run_dir = RunDir(results / (rt.name or cfg.run_id))
    if args.resume:
        run_dir = RunDir(Path(args.resume))
    if run_dir.exists():
        try:
            old = run_dir.read_config()["config"]
        except (OSError, ValueError, KeyError):
            raise UserError(f"{run_dir.config_file} is unreadable; move the run away") from None
        diff = config_diff(old, cfg.to_dict())
        if diff:
            raise UserError(
                f"{run_dir.path} holds a run with another config (refusing to resume): "
                + "; ".join(diff)
            )
    base = check_writable(run_dir.path, "--results")
    if (run_dir.read_status() or {}).get("state") not in ("completed", "diverged"):
        check_space(cfg, rt, base)
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
        runtime = dict(doc["runtime"])
    except (OSError, ValueError, KeyError):
        raise UserError(f"--resume: {run.config_file} is unreadable") from None
    if not any(checkpoint.verify(c.path) is not None
               for c in checkpoint.list_checkpoints(run.checkpoints_dir)):  # fmt: skip
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


COMMANDS = {"train": cmd_train}


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
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"reproduce {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            print("interrupted", file=sys.stderr)
        return 130
