"""``reproduce train``: plan one run (flags, ``--config``, ``--resume``; every check before
anything is written) and train it in this process."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config.options import OPTIONS_BY_KEY
from ..config.run import (
    RunConfig,
    resolve_run_config,
    resolve_runtime_config,
)
from ..config.runtime import RuntimeConfig
from ..errors import UserError
from ..fileio import check_writable
from ..rundir.rundir import RunDir
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TEMPFAIL,
    Parser,
    add_run_options,
    check_enough_images,
    check_existing_run,
    check_resolution,
    check_space,
    given_options,
    subcommand,
    with_weights,
)

if TYPE_CHECKING:
    import torch

    from ..data.datasets import ImageDataset


@dataclass
class TrainPlan:
    cfg: RunConfig
    rt: RuntimeConfig
    dataset: ImageDataset
    run_dir: RunDir
    device: torch.device


def plan_train(args: argparse.Namespace) -> TrainPlan:
    given = given_options(args)
    if args.resume:
        own = Path(args.resume).absolute().parent
        if "results" in given and Path(given["results"]).absolute() != own:
            raise UserError(
                f"--results: --resume {args.resume} trains the run where it is, in {own}; "
                f"drop --results {given['results']} (it was ignored)"
            )
        given = _merge_resume(Path(args.resume), given)
    rt = resolve_runtime_config(given)
    from ..training.trainer import resolve_device

    device = resolve_device(rt.device)
    from ..data.datasets import load_dataset

    dataset = load_dataset(rt.data)
    cfg = resolve_run_config(given, dataset=dataset.kind, data_fingerprint=dataset.fingerprint)
    check_resolution(cfg, dataset, rt.data, data_given="data" in given)
    check_enough_images(dataset, cfg.batch_size, rt.data)
    results = Path(rt.results)
    run_dir = RunDir(results / (rt.name or cfg.run_id))
    if args.resume:
        run_dir = RunDir(Path(args.resume))
    linked = run_dir.linked_files()
    if linked:
        raise UserError(
            f"--results: {run_dir.path} holds symbolic links or special files "
            f"({', '.join(linked[:3])}); a run's files are never written through links "
            "or read from FIFOs: replace them with the files"
        )
    doc = check_existing_run(run_dir, cfg, refusing=" (refusing to resume)")
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
        if not isinstance(doc.get("runtime"), dict):
            raise ValueError("no runtime settings")
        saved = {k: v for k, v in doc["config"].items() if k in OPTIONS_BY_KEY}
        runtime = {k: v for k, v in doc["runtime"].items() if k in OPTIONS_BY_KEY}
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"--resume: {run.config_file} is unreadable ({e})") from None
    from ..rundir import checkpoint

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


def run(args: argparse.Namespace) -> int:
    from ..training.loop import StopFlag, train_run  # heavy imports after validation of the CLI

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


def add_parser(sub: Any) -> Parser:
    """The ``train`` subcommand's arguments."""
    train = subcommand(
        sub,
        "train",
        help="train one architecture x procedure cell (resumes if interrupted)",
        description="Train one cell. Re-running the same command resumes from the newest "
        "checkpoint; a completed or diverged run is never trained again.",
    )
    add_run_options(train)
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="resume this run directory (its config.json gives the settings)",
    )
    return train
