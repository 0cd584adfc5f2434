"""Every command in the README's code blocks is run here, by CI's script, or (where it trains
for hours or needs the network) parsed by the real parser and named with the test that runs
it: a renamed flag or subcommand breaks this test, not a reader's first try."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from reproduce.cli import SUBPARSERS, build_parser

from .conftest import REPO, run_cli
from .lsun import make_lmdb

README = REPO / "README.md"
CI = REPO / ".ci" / "run"

# commands that run for hours, need LSUN, the network or a GPU: parsed here, run by these tests
RUN_ELSEWHERE = {
    "report": "tests/test_report.py",
    "figures": "tests/test_figures.py",
    "bench": "tests/test_bench.py",
    "gpu-check": "tests/test_gpucheck.py",
    "fetch-weights": "tests/test_metrics.py",
}
# the README's setup commands and the line of .ci/run that does the same
SETUP = {
    "python -m venv .venv && . .venv/bin/activate": "python3 -m venv .venv-ci",
    "pip install torch torchvision": "python -m pip install -q torch==2.14.1 torchvision==0.29.1",
    "pip install -e '.[test]'": "python -m pip install -q -e '.[dev]'",  # dev includes test
    "pip install -e '.[dev]'": "python -m pip install -q -e '.[dev]'",
    "ruff check . && ruff format --check . && mypy reproduce architectures": "ruff check .",
    "python -m pytest": "python -m pytest",
}


def readme_commands() -> list[str]:
    """Each command line of the README's fenced blocks, comments stripped; a line that starts
    with spaces continues the previous one (the `train` synopsis)."""
    out: list[str] = []
    fenced = False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced or not line.strip() or line.lstrip().startswith("#"):
            continue
        text = re.sub(r"\s+#\s.*$", "", line).rstrip()
        if line.startswith(" ") and out:
            out[-1] += " " + text.strip()
        else:
            out.append(text)
    return out


def elided(command: str) -> str:
    """The README's ``...``: a flag's elided value becomes X, other elisions are dropped."""
    return re.sub(r"(--[a-z-]+) \.\.\.", r"\1 X", command).replace(" ...", "")


def reproduce_argv(command: str) -> list[str]:
    """``[ENV=V ...] python -m reproduce ARGS`` -> ARGS."""
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]
    assert words[:3] == ["python", "-m", "reproduce"], command
    return words[3:]


def test_the_readme_commands_are_all_accounted_for():
    commands = readme_commands()
    assert len(commands) >= 30, commands
    ci = CI.read_text()
    for c in commands:
        if "python -m reproduce" in c:
            continue
        if c.startswith("tensorboard "):  # run (with --inspect, offline) by test_board
            assert '"--inspect", "--logdir"' in (REPO / "tests" / "test_board.py").read_text()
            continue
        if c.startswith("export "):
            name = c.split()[1].split("=")[0]
            metrics = REPO / "reproduce" / "evaluation" / "metrics.py"
            assert name in metrics.read_text(), c  # a variable we read
            continue
        assert c in SETUP, f"a README command no test or CI step runs: {c!r}"
        assert SETUP[c] in ci, f".ci/run no longer does {c!r} ({SETUP[c]!r})"


@pytest.mark.parametrize("command", [c for c in readme_commands() if "python -m reproduce" in c])
def test_every_readme_command_parses(command):
    argv = reproduce_argv(elided(command))
    if "[--" in command:  # the train synopsis: every flag it shows exists
        flags = set(re.findall(r"--[a-z-]+", command))
        build_parser()
        known = {o for a in SUBPARSERS[argv[0]]._actions for o in a.option_strings}
        assert flags <= known, flags - known
        return
    if argv[-1] == "--help":
        return  # run below
    args, extra = build_parser().parse_known_args(argv)
    assert extra == [], f"{command}: unknown arguments {extra}"
    if args.command in RUN_ELSEWHERE:
        where = REPO / RUN_ELSEWHERE[args.command]
        assert f'"{args.command}"' in where.read_text(), (command, where)


@pytest.fixture(scope="module")
def lsun_root(tmp_path_factory) -> Path:
    """The README's /data/lsun: a real LMDB in the official layout, 120 images."""
    root = tmp_path_factory.mktemp("data") / "lsun"
    make_lmdb(root / "bedroom_train_lmdb", n=120, corrupt=0)
    return root


def localise(command: str, root: Path, results: Path) -> list[str]:
    text = command.replace("/data/lsun", str(root)).replace("CACHE", str(root / "bedroom-64"))
    source = f"--source {root}/bedroom_train_lmdb --out {root}/bedroom-64-val"
    text = text.replace("--source ... --out ...", source)
    text = text.replace("matrix ... --dry-run", "matrix --profile demo --dry-run")
    argv = reproduce_argv(text)
    if argv[0] == "matrix":
        argv += [] if "--dry-run" in argv else ["--dry-run"]  # planning and checks, no training
    if argv[0] in ("matrix", "status"):
        argv += ["--results", str(results)]
    return argv


def test_the_readme_commands_that_run_in_seconds_run(lsun_root, tmp_path):
    """prepare-data on a real LMDB, every matrix command as a dry run (each cell planned and
    checked, nothing trained), status, and the help."""
    results = tmp_path / "results"
    results.mkdir()
    runnable = [c for c in readme_commands() if "python -m reproduce" in c and "[--" not in c]
    ran = []
    # prepare-data first: the matrix commands use the cache it makes
    order = sorted(runnable, key=lambda c: "prepare-data" not in c)
    for command in order:
        argv = localise(command, lsun_root, results)
        if argv[0] not in ("prepare-data", "matrix", "status") and argv[-1] != "--help":
            continue
        r = run_cli(*argv, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
        assert r.returncode == 0, f"{command}\n{argv}\n{r.stdout}\n{r.stderr}"
        ran.append(argv[0])
    assert ran.count("prepare-data") == 2 and ran.count("matrix") >= 8 and "status" in ran, ran
    assert not list(results.glob("*/stats.jsonl"))  # nothing trained
