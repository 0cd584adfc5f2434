"""What each gpu-check section costs, against the time box it gets.

A section's box must hold its CPU-side work (process start-ups, FLOP counts, network builds,
compiles of the CUDA-only tests, torch-fidelity's set-up and its FID/KID arithmetic: work a
GPU does not shorten) plus its GPU work. The CPU-side seconds are measured on a CPU machine
by ``python -m reproduce.speed.boxes --write`` and kept in ``boxes.json`` beside this file
with the machine and the date; the GPU seconds are estimates, FLOPs over an assumed rate
(``ASSUMED_TFLOPS``, well under an H100's fp32 peak of 66.9), because no GPU has measured
them yet. ``tests/test_gpucheck.py`` checks every box of the default GPU run against the two.

Only the work a section must do is costed. What it does while time is left (the fast-mode
compiles of step-times, the projection's extra measured cells) takes what the box has left
and is recorded as not measured when nothing is left.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from .gpucheck import REPO, SECTIONS, SHARE, STEP_CELLS, Settings, child_env

FILE = Path(__file__).with_name("boxes.json")
ASSUMED_TFLOPS = 10.0  # exact mode (fp32, no TF32): 15% of an H100's fp32 peak
INCEPTION_GFLOP = 5.7  # one 299x299 image through Inception-v3, forward (2 FLOPs per MAC)
TRAIN_CELL = ("baseline", "wgan-gp")


def boxes(s: Settings) -> dict[str, float]:
    """Each section's box when every earlier one uses all of its own (the worst case;
    gpucheck.run gives a later section what an earlier one leaves)."""
    left, out = s.budget_s, {}
    todo = [n for n in SECTIONS if n in s.sections]
    for i, name in enumerate(todo):
        out[name] = left * SHARE[name] / sum(SHARE[n] for n in todo[i:])
        left -= out[name]
    return out


def _flops(arch: str, procedure: str, dim: int, batch: int) -> int:
    from ..config.run import resolve_run_config
    from ..training import flops

    cfg = resolve_run_config({"arch": arch, "procedure": procedure, "dim": dim,
                              "batch_size": batch}, dataset="demo",
                             data_fingerprint="count")  # fmt: skip
    return flops.iteration_cost(cfg).flops


def gpu_estimates(s: Settings) -> dict[str, float]:
    """Seconds of GPU work each section must do, from FLOPs at ASSUMED_TFLOPS."""
    rate = ASSUMED_TFLOPS * 1e12

    def iters(arch: str, procedure: str, n: float) -> float:
        return n * _flops(arch, procedure, s.dim, s.batch) / rate

    from architectures import PAIRS

    # step-times: the port and exact mode, warm-up (2-3) and the timed rounds, per cell
    step = sum(iters(a, p, 2 * (3 + s.rounds)) for a, p in STEP_CELLS[: s.step_cells])
    # train: s.train_s of training and a 5 s stint are wall time, and as long again for the
    # same run uninterrupted (the resume's bit check); the graphs' bit check: 2 x 6 its
    train = 2 * (s.train_s + min(5.0, s.train_s)) + iters(*TRAIN_CELL, 12)
    # inception: generated and reference images through Inception (the demo has 2,048)
    images = s.is_samples + min(s.is_samples, 2048)
    inception = images * INCEPTION_GFLOP * 1e9 / rate
    # packing: k cells x (2 warm-up + pack_iters), for k in pack_k, per architecture
    packing = sum(iters(a, "wgan-gp", k * (2 + s.pack_iters)) for a in s.pack_archs
                  for k in s.pack_k)  # fmt: skip
    # projection: one WGAN-GP cell per architecture measured (3 + 5 iterations)
    projection = sum(iters(a, "wgan-gp", 8) for a in PAIRS if (a, "wgan-gp") not in STEP_CELLS)
    return {"cuda-tests": 5.0, "step-times": step, "train": train, "inception": inception,
            "packing": packing, "projection": projection}  # fmt: skip


# --------------------------------------------------------------------------------------------
# the CPU-side measurements
# --------------------------------------------------------------------------------------------
def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _cli(*argv: str) -> float:
    """Seconds of one command's run to its end, as a child process."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *argv], cwd=REPO, env=child_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - t0


def _builds(cells: Any, dim: int, batch: int, port: bool = False, count: bool = True) -> float:
    """Build each cell's Trainer (and the plain port) and count its FLOPs, in one process."""
    import importlib

    import torch

    from ..config.run import resolve_run_config
    from ..data.datasets import load_demo
    from ..training.trainer import Trainer

    ds = load_demo()
    t0 = time.perf_counter()
    for arch, procedure in cells:
        cfg = resolve_run_config({"arch": arch, "procedure": procedure, "dim": dim,
                                  "batch_size": batch}, dataset="demo",
                                 data_fingerprint=ds.fingerprint)  # fmt: skip
        if count:
            _flops(arch, procedure, dim, batch)
        Trainer(cfg, ds, torch.device("cpu"))
        if port:
            importlib.import_module("tests.reference").ReferenceCell(cfg, ds, torch.device("cpu"))
    return time.perf_counter() - t0


def _fast_test_compiles() -> float:
    """test_fast_mode_trains_on_cuda's work on the CPU: both fast modes compiled, three and 20
    iterations, with the exact run it compares against (compiling is CPU work)."""
    import torch

    from ..config.run import RunConfig, resolve_run_config
    from ..data.datasets import load_demo
    from ..training.trainer import Trainer, configure_numerics

    ds = load_demo()
    base = resolve_run_config({"arch": "mlp-generator", "procedure": "dcgan", "dim": 16,
                               "batch_size": 8}, dataset="demo",
                              data_fingerprint=ds.fingerprint)  # fmt: skip
    cpu = torch.device("cpu")
    t0 = time.perf_counter()
    exact = Trainer(base, ds, cpu)
    for _ in range(3):
        exact.step()
    for mode, steps in (("fast-bf16", 3), ("fast", 20)):  # the second one: reduce-overhead
        configure_numerics(cpu, fast=True)
        t = Trainer(RunConfig(**{**base.to_dict(), "mode": mode}), ds, cpu)
        for _ in range(steps):
            t.step()
    configure_numerics(cpu)
    return time.perf_counter() - t0


def _cold_compiles() -> float:
    """_fast_test_compiles in a fresh process with an empty compile cache (a GPU loan starts
    with none; a warm cache makes the same compiles several times faster)."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**child_env(), "TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": cache,
               "TORCHINDUCTOR_FX_GRAPH_CACHE": "0",
               "TORCHINDUCTOR_AUTOGRAD_CACHE": "0"}  # fmt: skip
        code = "from reproduce.speed.boxes import _fast_test_compiles as f; print(f())"
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
    return float(out.split()[-1])


def _inception_setup(samples: int) -> float:
    """The random weights file, torch-fidelity's extractor built from it, and its FID and
    KID arithmetic on ``samples`` features per side (numpy and scipy, on the CPU)."""
    import importlib

    import numpy as np
    import torch
    from torch_fidelity import metric_fid, metric_kid
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = importlib.import_module("tests.inception").make_random_inception_weights(
            Path(tmp) / "inception.pth"
        )
        FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                    feature_extractor_weights_path=str(path))  # fmt: skip
        rng = np.random.default_rng(0)
        a, b = (torch.from_numpy(rng.standard_normal((samples, 2048)).astype(np.float32))
                for _ in range(2))  # fmt: skip
        metric_fid.fid_statistics_to_metric(
            metric_fid.fid_features_to_statistics(a),
            metric_fid.fid_features_to_statistics(b),
            False,
        )
        metric_kid.kid_features_to_metric(a, b, kid_subsets=100, kid_subset_size=1000,
                                          verbose=False)  # fmt: skip
        return time.perf_counter() - t0


def measure_cpu_side(s: Settings, repeats: int = 1) -> dict[str, float]:
    """Seconds of each section's CPU-side work at the GPU run's settings, on this machine."""
    from architectures import PAIRS

    from ..gan.procedures import PROCEDURES

    def best(fn: Callable[[], float]) -> float:
        return min(fn() for _ in range(repeats))

    files = [str(p.relative_to(REPO)) for p in sorted((REPO / "tests").glob("test_*.py"))
             if "pytest.mark.cuda" in p.read_text()]  # fmt: skip
    pytest_start = best(lambda: _cli("-m", "pytest", *files, "-m", "cuda", "--collect-only",
                                     "-q", "-p", "no:cacheprovider"))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        # a train process from start to its first iteration and exit (batch 2: the start-up,
        # with the FLOP count, not the arithmetic), then the same command resumed
        cmd = ("-m", "reproduce", "train", "--arch", TRAIN_CELL[0], "--procedure",
               TRAIN_CELL[1], "--dim", str(s.dim), "--batch-size", "2", "--iters", "1",
               "--device", "cpu", "--no-eval", "--no-progress", "--results", tmp)  # fmt: skip
        train_start = _cli(*cmd)
    worker = best(lambda: _cli("-c", "import reproduce.training.trainer"))
    cells = [(a, p) for a in PAIRS for p in PROCEDURES]
    counted = set(STEP_CELLS[: s.step_cells])
    measured = [(a, "wgan-gp") for a in PAIRS if (a, "wgan-gp") not in counted]
    return {
        "cuda-tests": pytest_start + best(_cold_compiles),
        "step-times": best(lambda: _builds(STEP_CELLS[: s.step_cells], s.dim, s.batch, True)),
        "train": 2 * train_start
        + best(lambda: _builds([TRAIN_CELL] * 2, s.dim, s.batch, count=False)),
        "inception": best(lambda: _inception_setup(s.is_samples)),
        # a pytest per architecture; per k, k workers start and build the cell at once
        # (each on its own cores), then two warm-up iterations (GPU work)
        "packing": sum(
            pytest_start
            + len(s.pack_k)
            * (worker + best(partial(_builds, [(a, "wgan-gp")], s.dim, s.batch, count=False)))
            for a in s.pack_archs
        ),
        # one WGAN-GP cell per architecture built and measured, and the FLOP counts of every
        # cell step-times did not count (the builds' counts are cached for the loop after)
        "projection": _builds(measured, s.dim, s.batch)
        + sum(_timed(partial(_flops, *c, s.dim, s.batch)) for c in cells if c not in counted),
    }


def gpu_run_settings() -> Settings:
    """The settings of the default GPU run (``gpu-check`` on a CUDA machine)."""
    return Settings.make("cuda", False, None, None, None, SECTIONS)


def load() -> dict[str, Any]:
    return json.loads(FILE.read_text())


def table(s: Settings, cpu_side: dict[str, float]) -> list[dict[str, Any]]:
    box, gpu = boxes(s), gpu_estimates(s)
    return [{"section": n, "box_s": round(box[n], 1), "cpu_side_s": round(cpu_side[n], 1),
             "gpu_estimate_s": round(gpu[n], 1), "fits": cpu_side[n] + gpu[n] <= box[n]}
            for n in box]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproduce.speed.boxes", description=__doc__)
    p.add_argument("--write", action="store_true", help=f"measure and write {FILE.name}")
    p.add_argument("--repeats", type=int, default=1, help="best of N for each measurement")
    a = p.parse_args(argv)
    s = gpu_run_settings()
    if a.write:
        import platform

        cpu = measure_cpu_side(s, a.repeats)
        doc = {
            "about": __doc__.split("\n\n")[1].replace("\n", " "),
            "measured": time.strftime("%Y-%m-%d"),
            "machine": f"{os.cpu_count()}-core {platform.machine()} CPU",
            "command": "python -m reproduce.speed.boxes --write",
            "settings": {"dim": s.dim, "batch": s.batch, "budget_s": s.budget_s},
            "cpu_side_s": {k: round(v, 1) for k, v in cpu.items()},
        }
        FILE.write_text(json.dumps(doc, indent=1) + "\n")
    cpu = load()["cpu_side_s"]
    print("| section | box (s) | CPU-side (s, measured) | GPU (s, estimated) | fits |")
    print("|---|---|---|---|---|")
    for r in table(s, cpu):
        print(
            f"| {r['section']} | {r['box_s']:.0f} | {r['cpu_side_s']:.1f} | "
            f"{r['gpu_estimate_s']:.1f} | {'yes' if r['fits'] else 'NO'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
