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
from torch import Tensor


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG stream, as plain types and tensors (loadable with weights_only=True). With a
    CUDA ``device`` (a run's), its generator only (``torch_cuda_scope`` "run"): the state
    then restores onto the run's device whatever the devices visible at the resume;
    otherwise every initialised device's ("all"), restored by index."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    py = random.getstate()
    own = device is not None and device.type == "cuda"
    if own and device is not None:  # (device is not None: for the type checker)
        cuda = [torch.cuda.get_rng_state(device)]
    else:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": cuda,
        "torch_cuda_scope": "run" if own else "all",
        "numpy": {
            "key": str(np_state[0]),
            "state": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py[0], list(py[1]), py[2]],
    }


def cuda_restores(
    state: dict[str, Any], device: torch.device | None, visible: int
) -> list[tuple[Tensor, int]]:
    """Which saved CUDA generator state goes to which visible device index. A run's own state
    ("run") goes to the run's device; states of every device ("all", and checkpoints written
    before the scope was recorded) go by index to the devices that exist now, or, for a
    run's device, only its own index. Never an index that is not visible."""
    states = list(state.get("torch_cuda") or [])
    if not states or visible < 1:
        return []
    run_index = None
    if device is not None and device.type == "cuda":
        run_index = device.index if device.index is not None else 0
    if state.get("torch_cuda_scope") == "run":
        return [(states[0], run_index)] if run_index is not None and run_index < visible else []
    if run_index is not None:
        return [(states[run_index], run_index)] if run_index < min(len(states), visible) else []
    return [(s, i) for i, s in enumerate(states[:visible])]


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore ``rng_state``'s streams; ``device``: the run's (where its CUDA state goes).
    Tensors are taken to the CPU first (torch wants CPU ByteTensors)."""
    torch.set_rng_state(state["torch_cpu"].cpu())
    if torch.cuda.is_available():
        for s, index in cuda_restores(state, device, torch.cuda.device_count()):
            torch.cuda.set_rng_state(s.cpu(), index)
    n = state["numpy"]
    np.random.set_state(
        (
            n["key"],
            n["state"].cpu().numpy().astype(np.uint32),
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
