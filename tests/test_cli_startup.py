"""Start-up of the command line: ``--help``, ``status`` and ``report`` import no torch (about
650 MB and 3.6 s on the reference machine), so they answer in well under two seconds and
``report`` stays under 1 GB. Checked here by what is imported (``status`` and ``report`` on a
real matrix: ``tests/test_report.py``); the times are benchmarks
(``tests/benchmarks/test_bench_cli.py``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO, cli_env

HEAVY = ("torch", "torch_fidelity", "torchvision")

# run main() in a fresh interpreter and print which heavy packages it imported
PROBE = """
import json, sys
from reproduce.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as e:
    rc = e.code
loaded = sorted({m.split('.')[0] for m in sys.modules} & set(PACKAGES))
print(json.dumps({"rc": rc, "loaded": loaded}))
""".replace("PACKAGES", repr((*HEAVY, "pandas", "numpy")))


def probe_imports(*args: str) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=cli_env(),
        cwd=REPO, timeout=120,
    )  # fmt: skip
    return json.loads(r.stdout.strip().splitlines()[-1])


COMMANDS = ["train", "matrix", "status", "report", "figures", "prepare-data", "bench",
            "fetch-weights", "gpu-check"]  # fmt: skip


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_imports_nothing_heavy(command):
    out = probe_imports(*([command] if command else []), "--help")
    assert out["rc"] == 0
    assert not set(out["loaded"]) & {*HEAVY, "pandas"}, out  # numpy (0.2 s) may come
