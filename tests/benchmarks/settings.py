"""Settings shared by the benchmark files, from the environment: BENCH_DEVICE (default cuda
when available, else cpu), BENCH_DIM and BENCH_BATCH (the paper's 64/64 on a GPU, 16/16 on a
CPU), and the device synchronisation every GPU timing ends with."""

from __future__ import annotations

import os

import torch

DEVICE = torch.device(
    os.environ.get("BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
)
ON_GPU = DEVICE.type == "cuda"
DIM = int(os.environ.get("BENCH_DIM", "64" if ON_GPU else "16"))
BATCH = int(os.environ.get("BENCH_BATCH", "64" if ON_GPU else "16"))


def sync() -> None:
    if ON_GPU:
        torch.cuda.synchronize(DEVICE)
