"""Shared fixtures and helpers: small real datasets, the real CLI in-process (``run_main``) and
in subprocesses (``run_cli``, ``popen_cli``), real small filesystems (``tmpfs``), the
uninterrupted reference runs of the resume tests (``reference``)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reproduce.cli import main
from reproduce.config.run import resolve_run_config
from reproduce.config.runtime import RuntimeConfig, usable_cpus
from reproduce.data.datasets import ImageDataset, fingerprint, load_demo

REPO = Path(__file__).resolve().parents[1]


def _share_the_cores() -> None:
    """Under pytest-xdist (pyproject.toml: two workers), each worker and every CLI process it
    starts get the worker's share of the cores, as the matrix gives each of its cells
    (cores // cells). With torch's default of one thread per core, two workers ran up to four
    busy OpenMP threads on this project's two cores, and the threads' spin-waiting cost more
    than the work: three test files took 229 s (400 CPU-s) against 146 s (239 CPU-s) with a
    thread each (2026-12-04). An OMP_NUM_THREADS the caller set is kept; one test alone
    (-n 0) keeps every core."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2 or "OMP_NUM_THREADS" in os.environ:
        return
    share = max(1, usable_cpus() // workers)
    os.environ["OMP_NUM_THREADS"] = str(share)  # inherited by every CLI process and SLURM job
    torch.set_num_threads(share)  # this worker's own in-process training


_share_the_cores()


@pytest.fixture(scope="session", autouse=True)
def judge_cache(tmp_path_factory) -> Path:
    """One demo-judge cache for the whole run, shared by the xdist workers (the first to need
    the judge builds it under a file lock; the others wait and load it), never the user's
    default one (unless $REPRODUCE_JUDGE_DIR names a cache, as `reproduce bench` does)."""
    from reproduce.evaluation import judge

    if os.environ.get(judge.ENV_DIR):
        return Path(os.environ[judge.ENV_DIR])
    root = tmp_path_factory.getbasetemp().parent / "judge-cache"
    os.environ[judge.ENV_DIR] = str(root)  # inherited by every CLI subprocess
    return root


@pytest.fixture(scope="session", autouse=True)
def verification_stamps(tmp_path_factory) -> Path:
    """The cache-verification stamps of this test run (inherited by CLI subprocesses), never
    the user's."""
    from reproduce.data import imagecache

    root = tmp_path_factory.getbasetemp().parent / "verified"
    os.environ[imagecache.ENV_STAMPS] = str(root)
    return root


@pytest.fixture(scope="session")
def demo_judge(judge_cache):
    from reproduce.evaluation import judge

    return judge.resolve_judge()[0]


@pytest.fixture(scope="session")
def demo() -> ImageDataset:
    return load_demo()


@pytest.fixture(scope="session")
def small_demo(demo: ImageDataset) -> ImageDataset:
    """128 demo images (all 8 modes): enough for small-batch training tests."""
    images = demo.images[:128].clone()
    return ImageDataset("demo", images, fingerprint("demo", images), {"n": 128})


def small_config(dataset: ImageDataset, **overrides):
    choices = {"dim": 8, "batch_size": 4, "iters": 3, **overrides}
    return resolve_run_config(choices, dataset=dataset.kind, data_fingerprint=dataset.fingerprint)


# A demo cell's final evaluation judges 2,000 samples by default: with torch-fidelity's KID
# (100 subsets of 1,000) about 6 CPU-s a cell. A test about dispatch, checkpoints or reports,
# not scores, judges 200: the report test's 4-cell matrix took 67 CPU-s with the default and
# 25 with this (2026-12-04).
FINAL_EVAL = ("--final-eval-samples", "200")

# A 3-iteration demo matrix (the matrix, packing and status tests), judged on FINAL_EVAL's
# samples.
DEMO_FAST = ("--profile", "demo", "--iters", "3", "--no-progress", *FINAL_EVAL)


def quiet_runtime(results: Path, **overrides) -> RuntimeConfig:
    """In-process training without progress bars, FLOP counting or evaluation (a test that
    evaluates says so: ``eval=True``)."""
    return RuntimeConfig(**{"results": str(results), "progress": False, "count_flops": False,
                            "eval": False, **overrides})  # fmt: skip


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "REPRODUCE_FAULTS"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run ``python -m reproduce ARGS`` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "reproduce", *args],
        capture_output=True,
        text=True,
        env=env or cli_env(),
        cwd=cwd or REPO,
        timeout=timeout,
    )


def popen_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "reproduce", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or cli_env(),
        cwd=REPO,
    )


def load_final_state(run_dir: Path) -> dict:
    from reproduce.rundir import checkpoint

    loaded = checkpoint.load_latest(run_dir / "checkpoints")
    assert loaded is not None, f"no checkpoint in {run_dir}"
    return loaded[1]


def assert_states_equal(a, b, path: str = "state") -> None:
    """Recursive torch.equal over nested dicts/lists of tensors and numbers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: keys differ"
        for k in a:
            assert_states_equal(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_states_equal(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def states_equal(a, b) -> bool:
    try:
        assert_states_equal(a, b)
    except AssertionError:
        return False
    return True


# The suite runs on two xdist workers, one file per worker (pyproject.toml). Hand out the long
# files first, so that the two workers finish at about the same time.
_FIRST = ("test_slurm.py", "test_resume.py", "test_matrix.py", "test_reliability.py",
          "test_gpucheck.py")  # fmt: skip


def pytest_collection_modifyitems(session, config, items):
    def rank(item) -> int:
        name = item.path.name
        return _FIRST.index(name) if name in _FIRST else len(_FIRST)

    items.sort(key=rank)  # stable: keeps the order within each file


def pytest_runtest_logreport(report):
    """With $REPRODUCE_TEST_LOG set (``gpu-check``'s CUDA tests), one JSON line per test as it
    finishes, so that a run killed by its time box keeps every outcome it had."""
    path = os.environ.get("REPRODUCE_TEST_LOG")
    if not path or (report.when != "call" and report.outcome == "passed"):
        return
    import json

    message = ""
    if report.outcome != "passed":
        longrepr = report.longrepr
        message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr).splitlines()[-1]
    row = {"test": report.nodeid, "when": report.when, "outcome": report.outcome,
           "seconds": report.duration, "message": str(message)[:300]}  # fmt: skip
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


class Payload:
    """Unpickling this runs ``touch MARKER``: what a crafted file would do (the hostile-file
    tests assert that the marker never appears)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as e:  # argparse errors
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture
def tmpfs(tmp_path):
    """Mount real small filesystems (tmpfs, needs root): ``tmpfs("2m") -> Path``."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"tmpfs-{len(mounted)}"
        mnt.mkdir()
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            if os.environ.get("CI"):
                pytest.fail(f"cannot mount a tmpfs in CI: {r.stderr.strip()}")
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """``reference(procedure, ...)``: the uninterrupted run that a resumed one must equal,
    trained once per module and procedure (tests/procs.py)."""
    from .procs import make_reference

    return make_reference(tmp_path_factory)
