"""Start-up time and memory of the command line (issue: ``--help`` and ``status`` under 2 s):
each command in a fresh interpreter, as a user types it. What they import is tested in the
suite (``tests/test_cli_startup.py``); these are the measured figures."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ..conftest import REPO, cli_env

# python -m reproduce ARGS, then its peak resident memory (VmHWM, Linux) on stderr's last line
RUN = """
import atexit, runpy, sys
def peak():
    with open("/proc/self/status") as f:
        print(next(l for l in f if l.startswith("VmHWM")).split()[1], file=sys.stderr)
atexit.register(peak)
runpy.run_module("reproduce", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("command", [["--help"], ["train", "--help"], ["status"]])
def test_cli_startup(benchmark, command, tmp_path):
    args = [*command, "--results", str(tmp_path)] if command == ["status"] else command
    peak_kb: list[int] = []

    def run() -> None:
        r = subprocess.run([sys.executable, "-c", RUN, *args], env=cli_env(), cwd=REPO,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
        peak_kb.append(int(r.stderr.strip().splitlines()[-1]))

    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(peak_rss_mb=max(peak_kb) / 1024)
    print(f"\n{' '.join(command)}: {benchmark.stats.stats.median:.2f} s median, "
          f"peak RSS {max(peak_kb) / 1024:.0f} MB")  # fmt: skip
