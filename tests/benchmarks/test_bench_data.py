"""The data path: prepare-data decoding rate, and the loader's rate against the fastest
cell's consumption (issue: the loader must deliver at least 10x what the fastest cell uses).

Sizes come from the environment so a GPU node can run the same file at full scale:
BENCH_CACHE_IMAGES (default 4096) images in the benchmark cache, BENCH_DEVICE (default cuda
when available, else cpu)."""

from __future__ import annotations

import os
import time

import pytest

from reproduce.data import prepare
from reproduce.data.datasets import BatchSource, load_dataset

from ..lsun import make_lmdb
from .settings import DEVICE, sync

N_IMAGES = int(os.environ.get("BENCH_CACHE_IMAGES", "4096"))
BATCH = 64


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_lmdb(tmp_path_factory.mktemp("lsun") / "bedroom_train_lmdb", n=N_IMAGES, corrupt=0)


@pytest.fixture(scope="module")
def cache(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    return prepare.prepare(source.path, out, prepare.Options(progress=False))


def test_prepare_data_rate(benchmark, source, tmp_path):
    """Images per second through decode + resize + crop + write, all cores."""
    outs = iter(range(1_000_000))

    def run():
        prepare.prepare(source.path, tmp_path / f"o{next(outs)}", prepare.Options(progress=False))

    benchmark.pedantic(run, rounds=2, iterations=1)
    rate = len(source.keys) / benchmark.stats.stats.min
    benchmark.extra_info.update(images_per_s=rate, workers=prepare.Options().workers)
    print(f"\nprepare-data: {rate:,.0f} images/s with {prepare.Options().workers} workers")


@pytest.mark.parametrize("placement", ["device", "host"])
def test_loader_rate(benchmark, cache, placement):
    """Batches of 64 real images, scaled to [-1, 1] on the training device, 100 per round."""
    ds = load_dataset(str(cache.path))
    src = BatchSource(ds, BATCH, seed=0, device=DEVICE, placement=placement)

    def run():
        for _ in range(100):
            src.next()
        sync()

    run()  # warm: page cache, pinned buffers
    benchmark.pedantic(run, rounds=5, iterations=1)
    rate = 100 * BATCH / benchmark.stats.stats.min
    benchmark.extra_info.update(images_per_s=rate, device=str(DEVICE), placement=placement)
    print(f"\nloader ({placement}, {DEVICE}): {rate:,.0f} images/s")


def test_loader_outpaces_the_fastest_cell_tenfold(cache):
    """The fastest cell's real-image consumption on this device, measured, against the host
    loader (the slower placement). Consumption = real images per generator iteration (64 for
    dcgan/lsgan, 320 for the WGANs) x iterations per second."""
    from reproduce.config.run import resolve_run_config
    from reproduce.training.trainer import Trainer

    ds = load_dataset(str(cache.path))
    best = 0.0
    for arch, procedure in (("mlp-generator", "dcgan"), ("mlp-generator", "wgan-gp"),
                            ("baseline", "wgan")):  # fmt: skip
        cfg = resolve_run_config({"arch": arch, "procedure": procedure, "iters": 10},
                                 dataset=ds.kind, data_fingerprint=ds.fingerprint)  # fmt: skip
        trainer = Trainer(cfg, ds, DEVICE)
        trainer.step()  # warm
        sync()
        t0 = time.perf_counter()
        for _ in range(3):
            trainer.step()
        sync()
        per_iter = (time.perf_counter() - t0) / 3
        best = max(best, cfg.n_critic * cfg.batch_size / per_iter)
    src = BatchSource(ds, BATCH, seed=0, device=DEVICE, placement="host")
    src.next()
    t0 = time.perf_counter()
    for _ in range(200):
        src.next()
    sync()
    loader = 200 * BATCH / (time.perf_counter() - t0)
    print(
        f"\nfastest cell consumes {best:,.0f} real images/s on {DEVICE}; host loader delivers "
        f"{loader:,.0f} ({loader / best:,.0f}x)"
    )
    assert loader >= 10 * best
