"""The Inception-score evaluation: generating the samples and scoring them through
torch-fidelity's TF-compatible InceptionV3 (IS, FID and KID against a reference set), the
cost every periodic evaluation adds to a run.

Uses the weights in REPRODUCE_INCEPTION_WEIGHTS when set (the real file: same cost as the
random one, the architecture is the same), else a randomly initialised file of the exact
architecture. BENCH_EVAL_SAMPLES generated samples (default 5,000 on a GPU, the periodic
protocol; 500 on a CPU), scored against as many reference images."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from architectures import get_pair
from reproduce.data.datasets import load_demo
from reproduce.evaluation import metrics

from ..inception import make_random_inception_weights
from .settings import DEVICE, ON_GPU, sync

N = int(os.environ.get("BENCH_EVAL_SAMPLES", "5000" if ON_GPU else "500"))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> metrics.InceptionWeights:
    given = os.environ.get("REPRODUCE_INCEPTION_WEIGHTS")
    path = Path(given) if given else make_random_inception_weights(
        tmp_path_factory.mktemp("w") / "inception.pth")  # fmt: skip
    return metrics.InceptionWeights(str(path), metrics.sha256_file(path), staged=False)


def test_inception_score_evaluation(benchmark, weights):
    torch.manual_seed(0)
    G = get_pair("baseline").generator(64, "tf-same").to(DEVICE)
    reference = metrics.reference_images(load_demo().images, N)
    protocol = metrics.Protocol(num_samples=N, reference_samples=N)
    parts: dict[str, float] = {}

    def evaluate():
        t0 = time.perf_counter()
        images = metrics.generate_uint8(G, N, 64, seed=1, device=DEVICE)
        sync()
        t1 = time.perf_counter()
        metrics.inception_metrics(images, weights, protocol, DEVICE, reference=reference)
        sync()
        parts.update(generate_s=t1 - t0, score_s=time.perf_counter() - t1)

    benchmark.pedantic(evaluate, rounds=2 if ON_GPU else 1, iterations=1,
                       warmup_rounds=1 if ON_GPU else 0)  # fmt: skip
    benchmark.extra_info.update(
        samples=N, images_per_s=N / benchmark.stats.stats.min, device=str(DEVICE), **parts
    )
    gen, score = parts["generate_s"], parts["score_s"]
    print(f"\nIS/FID/KID of {N} samples on {DEVICE}: {benchmark.stats.stats.min:.1f} s "
          f"(generate {gen:.1f} s, Inception + metrics {score:.1f} s)")  # fmt: skip


JUDGE_N = int(os.environ.get("BENCH_JUDGE_SAMPLES", "10000"))


def test_demo_judge_evaluation(benchmark, tmp_path):
    """The demo judge's evaluation of JUDGE_N (default 10,000) samples of a width-8 baseline
    generator (the demo profile's size): generating them, the judge's IS, Fréchet distance
    and KID against the 2,048 demo training images through torch-fidelity, and the modes
    covered. Target (issue 17): under 15 s on the project's 2-core CPU."""
    from reproduce.evaluation import judge

    j, _ = judge.resolve_judge()
    judge.register()
    net = j.load(DEVICE)
    torch.manual_seed(0)
    G = get_pair("baseline").generator(8, "tf-same").to(DEVICE)
    reference = load_demo().images
    protocol = metrics.Protocol(num_samples=JUDGE_N, reference_samples=len(reference))
    parts: dict[str, float] = {}

    def evaluate():
        t0 = time.perf_counter()
        images = metrics.generate_uint8(G, JUDGE_N, 16, seed=1, device=DEVICE)
        t1 = time.perf_counter()
        metrics.inception_metrics(images, j, protocol, DEVICE, feature_extractor=judge.NAME,
                                  reference=reference)  # fmt: skip
        t2 = time.perf_counter()
        judge.mode_stats(judge.predict(net, images.to(DEVICE))[1].cpu(), j.thresholds)
        sync()
        parts.update(generate_s=t1 - t0, score_s=t2 - t1, modes_s=time.perf_counter() - t2)

    benchmark.pedantic(evaluate, rounds=2, iterations=1)
    benchmark.extra_info.update(samples=JUDGE_N, device=str(DEVICE), **parts)
    print(f"\ndemo judge: {JUDGE_N} samples on {DEVICE} in {benchmark.stats.stats.min:.1f} s "
          f"(generate {parts['generate_s']:.1f} s, IS/FD/KID {parts['score_s']:.1f} s, modes "
          f"{parts['modes_s']:.1f} s)")  # fmt: skip
