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


# train two cells (TF Adam and TF RMSProp, FLOP count on) and load their optimisers' state
# as a resume does: was the compiler stack imported?
TRAIN_PROBE = """
import json, sys
from reproduce.cli import main
results = sys.argv[1]
common = ["train", "--iters", "1", "--dim", "8", "--batch-size", "2", "--no-eval",
          "--no-progress", "--no-tensorboard", "--threads", "1", "--results", results]
codes = [main([*common, "--procedure", p]) for p in ("wgan-gp", "wgan")]
import torch
from reproduce.gan.optim import TFAdam, TFRMSprop
for cls in (TFAdam, TFRMSprop):  # what a resume does with them
    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.ones(3)
    opt = cls([w], lr=0.1)
    opt.step()
    cls([w], lr=0.1).load_state_dict(opt.state_dict())
print(json.dumps({"rc": codes, "dynamo": "torch._dynamo" in sys.modules}))
"""


def test_eager_training_does_not_import_the_compiler(tmp_path):
    """An eager training process (no evaluation) never imports ``torch._dynamo``: 1.9 s and 65
    MB of a one-iteration run (5.3 s, 881 MB with it; 3.4 s, 816 MB without). torch wraps
    four ``Optimizer`` methods and every ``TorchDispatchMode.__torch_dispatch__`` in
    ``torch._disable_dynamo``, whose first call imports it; the harness's optimisers
    (``optim.EagerOptimizer``) and FLOP counter (``flops.FlopCounter``) opt out, since
    neither ever runs under ``torch.compile``. (Evaluation imports it anyway: torch-fidelity
    imports torchvision, which imports it.)"""
    r = subprocess.run(
        [sys.executable, "-c", TRAIN_PROBE, str(tmp_path)], capture_output=True, text=True,
        env=cli_env(), cwd=REPO, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"rc": [0, 0], "dynamo": False}, out
