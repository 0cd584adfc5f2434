"""TensorBoard event files: what a run writes (statistics, evaluations, throughput, sample
grids, its config), where (one readable run per matrix cell), and that SIGKILLs and resumes
leave each step in the files exactly once, with the values of the run that survived."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from reproduce.evaluation.keys import IS_MEAN
from reproduce.fileio import read_jsonl

from .conftest import FINAL_EVAL, run_cli
from .procs import ITERS, finish, sigkill_at, the_run, train_args


def board_of(results: Path, run: Path) -> Path:
    """The run's event directory: results/tensorboard/<arch>/<procedure>/s<seed>-<hash>."""
    cfg = json.loads((run / "config.json").read_text())["config"]
    (path,) = (results / "tensorboard" / cfg["arch"] / cfg["procedure"]).glob(f"s{cfg['seed']}-*")
    assert path.name == f"s{cfg['seed']}-{run.name.rsplit('-', 1)[1]}"
    return path


def raw_events(board: Path) -> list[tuple[str, int, float | None]]:
    """(tag, step, scalar value) of every summary in every event file, as written."""
    out = []
    for f in sorted(board.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(f)).Load():
            for v in event.summary.value:
                value = v.tensor.float_val[0] if v.tensor.float_val else None
                out.append((v.tag, event.step, value))
    return out


def accumulated(board: Path) -> EventAccumulator:
    ea = EventAccumulator(str(board), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def test_a_run_writes_its_statistics_evaluations_and_samples(tmp_path):
    results = tmp_path / "r"
    args = train_args(results, "wgan-gp", evaluate=True, iters=8)
    args[args.index("--sample-every") + 1] = "4"
    finish(args)
    run = the_run(results)
    ea = accumulated(board_of(results, run))
    scalars = set(ea.Tags()["scalars"])
    for tag in (
        "train/critic_loss",
        "train/generator_loss",
        "train/wasserstein_estimate",
        "train/gradient_penalty",
        "train/d_real",
        "train/d_fake",
        "speed/it_per_s",
        "speed/images_per_s",
        "eval/inception_score/periodic",
        "eval/inception_score/final",
        "eval/fid/final",
        "eval/modes_covered/final",
    ):
        assert tag in scalars, (tag, scalars)  # fmt: skip
    stats = read_jsonl(run / "stats.jsonl")
    loss = ea.Scalars("train/critic_loss")
    assert [e.step for e in loss] == [r["iter"] + 1 for r in stats] == list(range(1, 9))
    assert [e.value for e in loss] == pytest.approx([r["critic_loss"] for r in stats], rel=1e-6)
    # wall time: the training seconds, rising to the run's total
    walls = [e.wall_time for e in loss]
    status = json.loads((run / "status.json").read_text())
    assert walls == sorted(walls) and walls[-1] == pytest.approx(status["train_seconds"], rel=1e-3)
    final = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "final"][-1]
    (is_final,) = ea.Scalars("eval/inception_score/final")
    assert (is_final.step, is_final.value) == (8, pytest.approx(final[IS_MEAN], rel=1e-6))
    assert [e.step for e in ea.Images("samples")] == [4, 8]  # the grid of every sample step
    assert "config/text_summary" in ea.Tags()["tensors"]
    assert "_hparams_/session_start_info" in ea.PluginTagToContent("hparams")  # the config
    # --no-tensorboard: none at all
    off = tmp_path / "off"
    finish([*train_args(off, "dcgan", iters=2), "--no-tensorboard"])
    assert not (off / "tensorboard").exists()


def test_sigkill_twice_leaves_each_step_once_with_the_surviving_values(tmp_path):
    """Killed after 5 and after 11 logged iterations (checkpoints every 3), then finished:
    the killed processes had written steps the resumed ones computed again; the files must
    hold each (tag, step) once, and the values of stats.jsonl and metrics.jsonl."""
    results = tmp_path / "r"
    args = train_args(results, "wgan-gp", evaluate=True)
    for rows in (5, 11):
        sigkill_at(args, results, rows)
    finish(args)
    run = the_run(results)
    assert (run / "log.txt").read_text().count("resumed from ckpt-") == 2
    board = board_of(results, run)
    assert len(list(board.glob("events.out.tfevents.*"))) == 3  # one per process
    events = raw_events(board)
    twice = [key for key, n in Counter((tag, step) for tag, step, _ in events).items() if n > 1]
    assert twice == [], twice
    stats = read_jsonl(run / "stats.jsonl")
    for key, tag in (("critic_loss", "train/critic_loss"), ("gp", "train/gradient_penalty")):
        got = sorted((step, value) for t, step, value in events if t == tag)
        assert [s for s, _ in got] == list(range(1, ITERS + 1))
        assert [v for _, v in got] == pytest.approx([r[key] for r in stats], rel=1e-6)
    evals = read_jsonl(run / "metrics.jsonl")
    periodic = sorted((s, v) for t, s, v in events if t == "eval/inception_score/periodic")
    assert periodic == [(r["iter"], pytest.approx(r[IS_MEAN], rel=1e-6))
                        for r in evals if r["kind"] == "periodic"]  # fmt: skip
    assert [s for t, s, _ in events if t == "samples"] == [ITERS]


def test_a_matrix_reads_as_arch_procedure_seed_runs_in_tensorboard(tmp_path):
    """A 2x2 demo matrix: one TensorBoard run per cell, named <arch>/<procedure>/s<seed>-<hash>,
    each with its statistics, sample grids and evaluations, as the real `tensorboard
    --inspect --logdir results/tensorboard` (the README's command, offline) lists them."""
    import subprocess
    import sys

    results = tmp_path / "r"
    r = run_cli("matrix", "--profile", "demo", "--arch", "baseline", "tanh", "--procedure",
                "dcgan", "wgan-gp", "--iters", "4", "--executor", "debug", "--results",
                str(results), "--sample-every", "2", *FINAL_EVAL)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    boards = results / "tensorboard"
    runs = sorted(str(p.relative_to(boards).parent) for p in boards.glob("*/*/*/events.*"))
    assert [x.rsplit("-", 1)[0] for x in runs] == [
        "baseline/dcgan/s0",
        "baseline/wgan-gp/s0",
        "tanh/dcgan/s0",
        "tanh/wgan-gp/s0",
    ]
    tb = Path(sys.executable).with_name("tensorboard")
    inspect = subprocess.run([str(tb), "--inspect", "--logdir", str(results / "tensorboard")],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert inspect.returncode == 0, inspect.stderr
    listed = inspect.stdout.split("Found event files in:")[1].split("These tags")[0].split()
    assert sorted(str(Path(p).relative_to(results / "tensorboard")) for p in listed) == runs
    for run in runs:
        ea = accumulated(results / "tensorboard" / run)
        assert [e.step for e in ea.Scalars("train/critic_loss")] == [1, 2, 3, 4]
        assert [e.step for e in ea.Images("samples")] == [2, 4]
        assert [e.step for e in ea.Scalars("eval/inception_score/final")] == [4]


def test_a_full_disk_under_the_event_writer_is_the_runs_error_not_a_thread_traceback(tmpfs, capfd):
    """TensorBoard writes in a thread. On a full disk the failed write must reach the
    training thread as the OSError it is (the run then records a disk-full failure, as
    test_reliability checks with real runs), with no thread traceback on stderr, and closing
    the board afterwards must not raise (it runs in a `finally`)."""
    import errno

    from reproduce.training.board import Board

    from .test_reliability import fill

    fs = tmpfs("1m")
    board = Board(fs / "board", 0)
    fill(fs / "ballast")  # not one byte left
    rows = [{"iter": i, "time": 0.01, **{k: 0.5 for k in ("critic_loss", "wdist", "d_real",
            "d_fake", "gp", "generator_loss")}} for i in range(100)]  # fmt: skip
    with pytest.raises(OSError) as e:
        for n in range(100):
            board.stats([{**r, "iter": r["iter"] + 100 * n} for r in rows], float(n), 1.0)
    assert e.value.errno == errno.ENOSPC
    board.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception in thread" not in err, err
