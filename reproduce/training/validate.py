"""A checkpoint's training state checked field by field before a run resumes from it.

The checksum in ``meta.json`` proves only that ``state.pt`` is the file that was written
beside it; whoever can write one can write both. So nothing in a state is trusted: every
field must be what this run would have written at that checkpoint's iteration, in type,
range, shape and dtype, or the checkpoint is skipped like a corrupt one (``InvalidState``,
one line of reason). Notably the data position is not read but recomputed: each iteration
takes exactly ``n_critic`` batches, so the position after ``k`` iterations is a function of
``k`` alone, and a state must hold exactly it.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch
from torch import Tensor

from ..data.datasets import DataPosition
from .trainer import Trainer


class InvalidState(ValueError):
    """A training state this run cannot have written; the message says which field."""


def expected_position(iteration: int, n_critic: int, n: int, batch_size: int) -> DataPosition:
    """Where ``EpochSampler`` stands after ``iteration`` iterations of ``n_critic`` batches
    from a dataset of ``n`` images (an epoch's incomplete last batch is dropped)."""
    taken = iteration * n_critic
    if taken == 0:
        return DataPosition(0, 0)
    per_epoch = n // batch_size
    return DataPosition((taken - 1) // per_epoch, ((taken - 1) % per_epoch + 1) * batch_size)


def _int(state: dict[str, Any], key: str, low: int, high: int) -> int:
    v = state.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise InvalidState(f"{key} is {v!r}, not an integer in [{low}, {high}]")
    return v


def _seconds(state: dict[str, Any], key: str, default: float | None = None) -> None:
    v = state.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise InvalidState(f"{key} is {v!r}, not a finite number of seconds")


def _tensors_like(given: Any, want: dict[str, Tensor], what: str) -> None:
    """A state dict with exactly ``want``'s keys, each tensor of the same shape and dtype."""
    if not isinstance(given, dict) or set(given) != set(want):
        raise InvalidState(f"{what} does not hold this run's tensors")
    for k, w in want.items():
        g = given[k]
        if not isinstance(g, Tensor) or g.shape != w.shape or g.dtype != w.dtype:
            got = f"{tuple(g.shape)} {g.dtype}" if isinstance(g, Tensor) else type(g).__name__
            raise InvalidState(f"{what}.{k} is {got}, not {tuple(w.shape)} {w.dtype}")


def _optimizer(given: Any, opt: torch.optim.Optimizer, what: str) -> None:
    """Param groups of the same sizes; every per-parameter tensor a scalar or of its
    parameter's shape."""
    params = [p for group in opt.param_groups for p in group["params"]]
    if not isinstance(given, dict) or not isinstance(given.get("state"), dict):
        raise InvalidState(f"{what} is not an optimiser state")
    groups = given.get("param_groups")
    if not isinstance(groups, list) or [len(g.get("params", ())) for g in groups] != [
        len(g["params"]) for g in opt.param_groups
    ]:
        raise InvalidState(f"{what} does not hold this run's parameter groups")
    for pid, entry in given["state"].items():
        if isinstance(pid, bool) or not isinstance(pid, int) or not 0 <= pid < len(params):
            raise InvalidState(f"{what} names parameter {pid!r}")
        if not isinstance(entry, dict):
            raise InvalidState(f"{what}[{pid}] is not a parameter's state")
        for k, v in entry.items():
            if not isinstance(v, Tensor):
                continue
            if v.numel() != 1 and v.shape != params[pid].shape:
                raise InvalidState(f"{what}[{pid}].{k} has shape {tuple(v.shape)}")


def _rng(given: Any) -> None:
    """The saved random streams have the types and sizes ``rng.rng_state`` writes."""
    if not isinstance(given, dict):
        raise InvalidState("rng is not a set of random streams")
    cpu = given.get("torch_cpu")
    want = torch.get_rng_state()
    if not isinstance(cpu, Tensor) or cpu.dtype != torch.uint8 or cpu.shape != want.shape:
        raise InvalidState("rng.torch_cpu is not a CPU generator state")
    cuda = given.get("torch_cuda")
    if not isinstance(cuda, list) or not all(
        isinstance(s, Tensor) and s.dtype == torch.uint8 and s.dim() == 1 for s in cuda
    ):
        raise InvalidState("rng.torch_cuda is not a list of CUDA generator states")
    n = given.get("numpy")
    if not isinstance(n, dict) or n.get("key") != "MT19937":  # numpy's legacy generator
        raise InvalidState("rng.numpy is not a numpy generator state")
    s = n.get("state")
    if not isinstance(s, Tensor) or s.shape != (624,) or s.dtype != torch.int64:
        raise InvalidState("rng.numpy.state is not 624 words")
    pos = n.get("pos")
    if isinstance(pos, bool) or not isinstance(pos, int) or not 0 <= pos <= 624:
        raise InvalidState(f"rng.numpy.pos is {pos!r}")
    if n.get("has_gauss") not in (0, 1) or not isinstance(n.get("cached_gaussian"), float):
        raise InvalidState("rng.numpy's cached gaussian is not a flag and a number")
    py = given.get("python")
    version, words, _ = random.getstate()
    if (
        not isinstance(py, list) or len(py) != 3 or py[0] != version
        or not isinstance(py[1], list) or len(py[1]) != len(words)
        or not all(isinstance(w, int) and 0 <= w < 2**32 for w in py[1][:-1])
        or not isinstance(py[1][-1], int) or not 0 <= py[1][-1] <= 624
        or not (py[2] is None or isinstance(py[2], float))
    ):  # fmt: skip
        raise InvalidState("rng.python is not a Python generator state")


def check_state(state: dict[str, Any], trainer: Trainer, folder_iteration: int) -> None:
    """Every field of ``state`` as this run (``trainer``, fresh) would have written it in the
    checkpoint folder of ``folder_iteration``; InvalidState otherwise."""
    cfg = trainer.cfg
    it = _int(state, "iteration", 0, cfg.iters)
    if it != folder_iteration:
        raise InvalidState(f"iteration is {it}, but the checkpoint is of {folder_iteration}")
    if "setup_iterations" in state:  # absent in checkpoints written before they were kept
        _int(state, "setup_iterations", 0, it)
    _seconds(state, "train_seconds")
    _seconds(state, "setup_seconds", 0.0)
    sampler = trainer.batches.sampler
    want = expected_position(it, trainer.hp.n_critic, sampler.n, sampler.batch_size)
    if state.get("data") != want.to_dict():
        raise InvalidState(
            f"data position is {state.get('data')!r}; after {it} iterations it is {want.to_dict()}"
        )
    _tensors_like(state.get("generator"), trainer.G.state_dict(), "generator")
    _tensors_like(state.get("critic"), trainer.D.state_dict(), "critic")
    for part in ("generator", "critic"):  # the loop saves only after finding them finite
        for k, v in state[part].items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                raise InvalidState(f"{part}.{k} is not finite")
    _optimizer(state.get("opt_g"), trainer.opt_g, "opt_g")
    _optimizer(state.get("opt_d"), trainer.opt_d, "opt_d")
    noise = state.get("fixed_noise")
    if (
        not isinstance(noise, Tensor)
        or noise.shape != trainer.fixed_noise.shape
        or noise.dtype != trainer.fixed_noise.dtype
    ):
        raise InvalidState("fixed_noise is not this run's fixed noise")
    _rng(state.get("rng"))
