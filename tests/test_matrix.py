"""The matrix without training: pure expansion in the paper's order, profiles, bad inputs
(one line, exit 2, nothing written), the dry run and its estimate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from architectures import PAIRS
from reproduce.config.runtime import usable_cpus
from reproduce.errors import UserError
from reproduce.gan.procedures import PROCEDURES
from reproduce.matrix.cells import PROFILES, expand
from reproduce.matrix.experiments import Selection

from .conftest import DEMO_FAST, cli_env, run_main, tree

FP = {"dataset": "demo", "data_fingerprint": "demo-0000"}


def test_lsun_expansion_is_the_7x4_cross_product_in_paper_order():
    configs = expand("lsun", Selection(), {"dim": 8}, **FP)
    assert [(c.arch, c.procedure) for c in configs] == [(a, p) for a in PAIRS for p in PROCEDURES]
    assert len({c.run_id for c in configs}) == len(PAIRS) * len(PROCEDURES)  # 28 in the paper
    # every cell at its procedure's own defaults
    by = {(c.arch, c.procedure): c for c in configs}
    assert by[("gated", "wgan-gp")].critic_norm == "layer" and by[("gated", "wgan")].clip == 0.01
    assert by[("no-norm", "wgan-gp")].critic_norm == "none"
    assert by[("tanh", "lsgan")].optimizer == "rmsprop-tf"


def test_expansion_selection_seeds_and_shared_options():
    sel = Selection(archs=["tanh", "baseline"], procedures=["wgan-gp"], seeds=[0, 1, 2])
    configs = expand("lsun", sel, {"dim": 8, "iters": 7, "hparams": "official-code"}, **FP)
    assert [(c.seed, c.arch) for c in configs] == [
        (s, a) for s in (0, 1, 2) for a in ("tanh", "baseline")
    ]
    assert all(c.iters == 7 and c.beta1 == 0.0 for c in configs)
    assert expand("lsun", sel, {"dim": 8}, **FP) == expand("lsun", sel, {"dim": 8}, **FP)  # pure


def test_duplicates_and_meaningless_shared_options_are_refused():
    with pytest.raises(UserError, match="duplicate cells"):
        expand("lsun", Selection(archs=["tanh", "tanh"]), {}, **FP)
    with pytest.raises(UserError, match="duplicate cells"):
        expand("lsun", Selection(seeds=[1, 1]), {}, **FP)
    with pytest.raises(UserError, match="--gp-lambda means nothing for procedure dcgan"):
        expand("lsun", Selection(), {"gp_lambda": 5.0}, **FP)


def test_profiles():
    assert PROFILES["paper"].options == {"dim": 64, "batch_size": 64, "iters": 200_000}
    assert PROFILES["demo"].options["data"] == "demo"


def assert_matrix_rejected(tmp_path: Path, *argv: str, match: str) -> None:
    before = tree(tmp_path)
    code, out, err = run_main("matrix", "--results", str(tmp_path / "results"), *argv)
    assert code == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reproduce matrix: error:"), err
    assert match in lines[0], err
    assert tree(tmp_path) == before  # nothing written, nothing submitted


@pytest.mark.parametrize(
    "argv,match",
    [
        (
            ["--profile", "demo", "--arch", "basline"],
            "--arch: unknown architecture 'basline' (did you mean 'baseline'?)",
        ),
        (
            ["--profile", "demo", "--procedure", "wgan-gp", "lsgn"],
            "unknown procedure 'lsgn' (did you mean 'lsgan'?)",
        ),
        (["--profile", "dmeo"], "--profile: unknown profile 'dmeo' (did you mean 'demo'?)"),
        (["--profile", "demo", "--experiment", "lsnu"], "--experiment: unknown experiment 'lsnu'"),
        (
            ["--profile", "demo", "--executor", "slrum"],
            "unknown executor 'slrum' (did you mean 'slurm'?)",
        ),
        (["--profile", "demo", "--arch", "tanh", "tanh"], "duplicate cells"),
        (["--profile", "demo", "--seeds", "3", "3"], "duplicate cells"),
        (["--profile", "demo", "--seeds", "0", "-1"], "--seeds: must be >= 0, got -1"),
        (
            ["--profile", "demo", "--executor", "slurm", "--partition", "gpu"],
            "--partition gpu (a SLURM profile key: --slurm partition=gpu)",
        ),
        (["--profile", "demo", "--qos=high"], "(a SLURM profile key: --slurm qos=high)"),
        (
            ["--profile", "demo", "--time-limit", "90"],
            "(a SLURM profile key: --slurm time_limit=90)",
        ),
        (
            ["--profile", "demo", "--exclude"],
            "--exclude (a SLURM profile key: --slurm exclude=VALUE)",
        ),
        (["--profile", "paper"], "--data: profile 'paper' trains on LSUN bedrooms"),
        (["--profile", "paper", "--data", "/nonexistent/lsun"], "is neither a built-in dataset"),
        (["--profile", "demo", "--iters", "0"], "--iters: must be at least 1"),
        (
            ["--profile", "demo", "--gp-lambda", "3"],
            "--gp-lambda means nothing for procedure dcgan",
        ),
        (["--profile", "demo", "--workers", "0"], "--workers: must be at least 1"),
        (["--profile", "demo", "--gpus", "0,0"], "--gpus: indices must be distinct"),
        (["--profile", "demo", "--gpus", "0", "--cells-per-gpu", "0"], "must be at least 1"),
        (
            ["--profile", "demo", "--gpus", "0", "--cells-per-gpu", "2,resnet=2"],
            "--cells-per-gpu: unknown architecture 'resnet' (did you mean 'resnet101'?)",
        ),
        (
            ["--profile", "demo", "--gpus", "0", "--cells-per-gpu", "baseline=two"],
            "--cells-per-gpu: expected N, ARCH=N,..., auto or a benchmark FILE.json",
        ),
        (
            ["--profile", "demo", "--gpus", "none", "--cells-per-gpu", "2"],
            "--cells-per-gpu: no GPU to pack cells on",
        ),
        (
            ["--profile", "demo", "--executor", "slurm", "--cells-per-gpu", "2"],
            "--cells-per-gpu: packs cells of the local executor, not the slurm one",
        ),
        (
            ["--profile", "demo", "--gpus", "0", "--cells-per-gpu", "auto"],
            "--cells-per-gpu auto: no packing benchmark of a GPU at width 8, batch 16 under",
        ),
        (
            ["--profile", "demo", "--gpus", "0", "--cells-per-gpu", "/nonexistent/gpu.json"],
            "--cells-per-gpu: /nonexistent/gpu.json does not exist",
        ),
        (
            ["--profile", "demo", "--executor", "slurm", "--slurm", "partiton=gpu"],
            "unknown SLURM profile key 'partiton' (did you mean 'partition'?)",
        ),
        (
            ["--profile", "demo", "--executor", "slurm", "--slurm-profile", "defualt"],
            "no profile 'defualt' (did you mean 'default'?)",
        ),
        (
            [
                "--profile",
                "demo",
                "--executor",
                "slurm",
                "--slurm",
                "time_limit=5",
                "--checkpoint-every",
                "600",
            ],
            "time_limit 5 min is shorter than one checkpoint interval",
        ),
        (
            ["--profile", "demo", "--executor", "slurm", "--slurm", "cpus_per_task=two"],
            "'cpus_per_task' must be int",
        ),
    ],
)
def test_matrix_bad_inputs(tmp_path, monkeypatch, argv, match):
    monkeypatch.setenv("REPRODUCE_FAULTS", "fake-gpus")  # --gpus 0 on a CPU-only machine
    assert_matrix_rejected(tmp_path, *argv, match=match)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["matrix", "figures"])
def test_gpus_on_a_machine_without_cuda_are_refused(tmp_path, monkeypatch, command):
    """--gpus 0 where torch sees no GPU is a mistake, not a CPU run labelled 'GPU 0'."""
    monkeypatch.delenv("REPRODUCE_FAULTS", raising=False)
    before = tree(tmp_path)
    argv = ["fig2", "--profile", "demo"] if command == "figures" else ["--profile", "demo"]
    code, out, err = run_main(command, *argv, "--gpus", "0",
                              "--results", str(tmp_path / "results"))  # fmt: skip
    assert code == 2, out + err
    assert err.strip().splitlines() == [
        f"reproduce {command}: error: --gpus: torch sees no CUDA GPU on this machine, got "
        "'0'; leave --gpus out (or give 'none') to train on the CPU"
    ]
    assert tree(tmp_path) == before


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpus_beyond_the_visible_ones_are_refused(tmp_path):
    n = torch.cuda.device_count()
    assert_matrix_rejected(tmp_path, "--profile", "demo", "--gpus", str(n),
                           match=f"--gpus: this machine shows {n} GPU(s)")  # fmt: skip


def test_bad_slurm_profile_file(tmp_path):
    prof = tmp_path / "mine.toml"
    prof.write_text('partition = "gpu"\nmemory = 4\n')
    assert_matrix_rejected(
        tmp_path,
        "--profile",
        "demo",
        "--executor",
        "slurm",
        "--slurm-profile",
        str(prof),
        match=f"{prof}: unknown SLURM profile key 'memory'",
    )


def test_unwritable_results_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_main("matrix", "--profile", "demo", "--results", str(blocker / "r"))
    assert code == 2 and "--results:" in err and len(err.strip().splitlines()) == 1


def test_dry_run_lists_every_cell_and_writes_nothing(tmp_path):
    before = tree(tmp_path)
    code, out, err = run_main("matrix", *DEMO_FAST, "--results", str(tmp_path / "r"), "--dry-run")
    assert code == 0, err
    lines = out.strip().splitlines()
    n = len(PAIRS) * len(PROCEDURES)  # the paper's 28
    assert len(lines) == n + 2 and lines[-2].startswith(f"{n} cells, {n} to run")
    assert all(line.split()[1] == "pending" for line in lines[:-2])
    # on CPUs: the wall-time estimate from the measured per-cell costs (matrix/costs.py)
    assert lines[-1].startswith("estimated wall time: ") and "largest cells first" in lines[-1]
    assert tree(tmp_path) == before


def test_the_claims_estimate_is_the_measured_costs_on_the_workers(
    tmp_path, monkeypatch, demo_judge
):
    from reproduce.evaluation import judge
    from reproduce.matrix import costs

    # what the claims profile does besides training, from its settings: 5,000 iterations, the
    # demo judge every 500 (1,000 samples) and at the end (2,000), a held-out loss every 50
    # iterations (the shapes data has a val split), a sample grid every 500; its four rows
    schedule = costs.Schedule(evals=(1000,) * 9 + (2000,), heldouts=100, grids=10)
    rows = ("baseline", "constant-filters", "mlp-generator", "no-norm")
    cells = [{"arch": a, "procedure": p, "dim": 16, "batch_size": 16, "iters": 5000}
             for a in rows for p in ("dcgan", "lsgan", "wgan", "wgan-gp")]  # fmt: skip
    # started longest training first
    started = sorted(cells, key=lambda c: costs.cost(c).step, reverse=True)
    per_cell = [costs.cell_wall_seconds(c, schedule) for c in started]
    wall = costs.makespan(per_cell, 2)

    def estimate() -> str:
        code, out, err = run_main("matrix", "--profile", "claims", "--results", str(tmp_path),
                                  "--workers", "2", "--dry-run")  # fmt: skip
        assert code == 0, err
        return out.strip().splitlines()[-1]

    def shown(seconds: float) -> str:
        from reproduce.matrix.cells import duration_text

        return f"estimated wall time: {duration_text(seconds, spaced=True)} on 2 CPU worker(s)"

    line = estimate()  # the judge is cached (the demo_judge fixture built it)
    assert shown(wall) in line and "measured per cell" in line, line
    assert f"({sum(per_cell) / 3600:.2f} core-hours;" in line, line
    # no judge cached: it is built first, on one core, before any cell starts
    monkeypatch.setenv(judge.ENV_DIR, str(tmp_path / "no-judge"))
    assert shown(wall + costs.overhead("judge_build_s")) in estimate()
    assert not (tmp_path / "no-judge").exists()  # a dry run builds nothing
    # the longest cell alone bounds it from below; perfect balance from below too
    assert wall >= max(per_cell) and wall >= sum(per_cell) / 2
    # the profile fits the budget it was chosen for: about 2.5 hours on 2 cores
    assert wall <= 2.5 * 3600


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or usable_cpus() < 2,
    reason="needs CPU masks (Linux) and two CPUs to mask one off",
)
def test_the_default_workers_are_the_cpus_this_process_may_use(tmp_path):
    """Under a CPU mask (taskset, a SLURM or container cpuset) the demo profile runs one cell
    per CPU of the mask, not per core of the machine: a 4-CPU allocation on a 64-core node
    would otherwise start 64 cells of about 1 GB each on 4 CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    args = [sys.executable, "-m", "reproduce", "matrix", *DEMO_FAST, "--results", str(tmp_path),
            "--dry-run"]  # fmt: skip
    lines = {}
    for mask in ({cpus[0]}, set(cpus)):
        r = subprocess.run(args, capture_output=True, text=True, env=cli_env(), timeout=300,
                           preexec_fn=lambda m=mask: os.sched_setaffinity(0, m))  # fmt: skip
        assert r.returncode == 0, r.stderr
        lines[len(mask)] = r.stdout.strip().splitlines()[-1]
    assert "on 1 CPU worker(s)" in lines[1], lines
    assert f"on {len(cpus)} CPU worker(s)" in lines[len(cpus)], lines
    assert tree(tmp_path) == []
