"""Every global random stream in one place: saved into checkpoints and restored exactly
(``rng_state``/``set_rng_state``), seeded (``seed_everything``), and preserved around work that
must not change a run's trajectory (``preserved``: evaluation, FLOP counting)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Every RNG stream, as plain types and tensors (loadable with weights_only=True)."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    py = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "key": str(np_state[0]),
            "state": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py[0], list(py[1]), py[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if state["torch_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["key"],
            n["state"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CPU and every CUDA device


@contextlib.contextmanager
def preserved(all_cuda_devices: bool = False) -> Iterator[None]:
    """Put every global generator back as it was (CPU, CUDA where initialised, numpy, Python).
    ``all_cuda_devices``: fork every CUDA device's generator even before CUDA is initialised
    (``torch.manual_seed`` inside would otherwise queue seeds for them)."""
    state = rng_state()
    devices = range(torch.cuda.device_count()) if all_cuda_devices else ()
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            set_rng_state(state)
