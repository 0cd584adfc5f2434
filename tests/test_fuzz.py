"""Bad-input fuzzing of ``train`` and ``matrix`` (issue 18): every numeric option with 0, -1,
nan, inf, 1e23, 1e308, a 24-digit integer, 2**64 and a word. Each either runs (exit 0) or is
refused before any work: exit 2, one line naming the flag, no traceback, nothing written.
In-process (``main``), so the ~900 cases take seconds, not minutes."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

from reproduce.cli import build_parser

from .conftest import run_main, tree

VALUES = ["0", "-1", "nan", "inf", "1e23", "1e308", "100000000000000000000000",
          str(2**64), "many"]  # fmt: skip
# the smallest run: a valid value trains one iteration in well under a second
TINY = ["--dim", "4", "--batch-size", "2", "--iters", "1", "--no-progress", "--no-eval",
        "--sample-every", "0", "--no-count-flops", "--threads", "1", "--arch", "mlp-generator",
        "--procedure", "lsgan"]  # fmt: skip


# numbers given as text: GPU lists and packings
NUMERIC_TEXT = {"matrix": ["--gpus", "--cells-per-gpu"]}


def numeric_flags(command: str) -> list[str]:
    """Every option of ``command`` parsed as an int or a float, plus NUMERIC_TEXT."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = list(NUMERIC_TEXT.get(command, []))
    for action in sub.choices[command]._actions:
        if action.type in (int, float) and action.option_strings:
            flags.append(max(action.option_strings, key=len))
    return sorted(flags)


def test_the_fuzz_covers_every_numeric_option():
    from reproduce.config.options import OPTIONS

    numeric = {o.flag for o in OPTIONS if o.type in (int, float)}
    train, matrix = set(numeric_flags("train")), set(numeric_flags("matrix"))
    assert numeric == train and len(train) == 24
    # --share-gpu: the matrix sets it for each cell from its packing
    assert numeric - {"--seed", "--share-gpu"} | {"--seeds", "--workers", "--gpus",
                                                  "--cells-per-gpu"} == matrix  # fmt: skip


def check(tmp_path: Path, argv: list[str], flag: str, value: str) -> None:
    results = tmp_path / "results"
    before = tree(tmp_path)
    code, out, err = run_main(*argv, "--results", str(results))
    assert "Traceback" not in err and "Traceback" not in out, err
    if code == 0:
        return
    assert code == 2, f"{flag} {value}: exit {code}: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"{flag} {value}: {err}"
    assert flag in lines[0] or flag.replace("--", "") in lines[0], f"{flag} {value}: {err}"
    assert tree(tmp_path) == before, f"{flag} {value} wrote files though refused"


@pytest.mark.parametrize("flag", numeric_flags("train"))
def test_train_numeric_flags(flag, tmp_path):
    extra = {"--clip": ["--procedure", "wgan"], "--gp-lambda": ["--procedure", "wgan-gp"]}
    for value in VALUES:
        d = tmp_path / f"v{VALUES.index(value)}"
        d.mkdir()
        argv = ["train", *TINY, *extra.get(flag, []), f"{flag}={value}"]
        if flag in ("--beta1", "--beta2"):
            argv += ["--optimizer", "adam-tf", "--beta1", "0.5", "--beta2", "0.9"]
            argv.append(f"{flag}={value}")
        check(d, argv, flag, value)


@pytest.mark.parametrize("flag", numeric_flags("matrix"))
def test_matrix_numeric_flags(flag, tmp_path):
    for value in VALUES:
        d = tmp_path / f"v{VALUES.index(value)}"
        d.mkdir()
        argv = ["matrix", "--profile", "demo", "--arch", "mlp-generator", "--procedure", "lsgan",
                "--dry-run", f"{flag}={value}"]  # fmt: skip
        check(d, argv, flag, value)


def test_values_are_what_they_claim():
    assert math.isnan(float(VALUES[2])) and math.isinf(float(VALUES[3]))
