"""FLOPs per generator iteration and model FLOP utilisation (MFU).

Counting uses torch's own FLOP formulas (``torch.utils.flop_counter.flop_registry``: matmuls,
convolutions and their backward passes, counted as 2 FLOPs per multiply-add) through a small
dispatch mode. torch's ``FlopCounterMode`` itself cannot count these iterations: its module
tracker installs backward hooks that fail inside the gradient penalty's
``autograd.grad(create_graph=True)`` ("A leaf node was passed to _will_engine_execute_node").

One full generator iteration (the critic steps plus one generator step) is run on the CPU at
batch 2 and scaled to the configured batch: every counted op (matmul, convolution, and their
backward passes) costs exactly batch-proportional FLOPs, which a test checks. (The ``meta``
device would avoid the arithmetic, but its kernels are Python references: 40x slower.) The
count is the same for every device. Elementwise work (activations, norms, the optimiser) is
not counted, as usual for MFU.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from .. import envvars, rng
from .trainer import Trainer

ENV_PEAK = envvars.PEAK_TFLOPS  # override the device's peak (TFLOP/s), e.g. for a CPU

# Dense peak throughput in TFLOP/s by precision, from the vendors' data sheets (no sparsity).
# Exact mode computes in fp32 without TF32, so its MFU is against "fp32".
PEAKS: dict[str, dict[str, float]] = {
    "H100 SXM": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.0},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0},
    "H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0},
    "L40S": {"fp32": 91.6, "tf32": 183.0, "bf16": 362.1},
    "A10": {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0},
    "V100": {"fp32": 15.7, "tf32": 15.7, "bf16": 125.0},  # no TF32: fp32 units; bf16 = fp16 TC
}


class FlopCounter(TorchDispatchMode):
    """Sums torch's FLOP formulas over every aten op dispatched inside the context; also
    counts the ops (a measure of launch overhead in eager mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.ops = 0
        self.by_op: Counter[str] = Counter()

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # False: torch then leaves __torch_dispatch__ unwrapped. Its torch._disable_dynamo
        # wrapper (for modes active under torch.compile; the count runs one eager step) would
        # import torch._dynamo on first use (see optim.EagerOptimizer)
        return False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops += 1
        packet = func._overloadpacket
        formula = flop_registry.get(packet)
        if formula is not None:
            n = int(formula(*args, **kwargs, out_val=out))
            self.total += n
            self.by_op[str(packet)] += n
        return out


@dataclass(frozen=True)
class IterationCost:
    flops: int  # per generator iteration (critic steps + generator step)
    aten_ops: int  # aten ops dispatched per generator iteration (eager)

    def to_dict(self) -> dict[str, Any]:
        return {"flops_per_iter": self.flops, "aten_ops_per_iter": self.aten_ops}


@functools.lru_cache(maxsize=64)
def _count(config_items: tuple[tuple[str, Any], ...]) -> IterationCost:
    from architectures import get_pair

    from ..config.run import RunConfig
    from ..data.datasets import ImageDataset

    cfg = RunConfig.from_dict(dict(config_items))
    r = get_pair(cfg.arch).resolution
    images = torch.zeros((cfg.batch_size, 3, r, r), dtype=torch.uint8)
    dataset = ImageDataset("count", images, "count", {})
    with rng.preserved(all_cuda_devices=True):  # the Trainer reseeds every generator
        trainer = Trainer(cfg, dataset, torch.device("cpu"), data_placement="device")
        trainer.iteration = 1  # iteration 0 skips the generator step; count a full one
        with FlopCounter() as fc:
            trainer.step()
    return IterationCost(fc.total, fc.ops)


COUNT_BATCH = 2  # batch norm in training mode needs at least 2 samples


def _counted(cfg: Any) -> IterationCost:
    return _count(tuple(sorted(cfg.to_dict().items())))


def iteration_cost(
    cfg: Any, exact_batch: bool = False, exact_critic: bool = False
) -> IterationCost:
    """FLOPs of one full generator iteration of ``cfg`` (a RunConfig), counted at batch 2 and
    scaled (``exact_batch``: at the configured batch, for the linearity test), and from
    iterations of one and of two critic steps: every critic step costs the same, so n steps
    cost the one-step iteration plus n - 1 times the difference (``exact_critic``: all n
    counted, for the test). So the count is a few steps long whatever n_critic is (1,000
    critic steps of ResNet-101 took 297 s to count, and a SIGTERM waited for them). The count
    is of the computation, the same in every mode: it runs the exact eager path."""
    cfg = dataclasses.replace(cfg, mode="exact")
    batch = cfg.batch_size if exact_batch or cfg.batch_size <= COUNT_BATCH else COUNT_BATCH
    small = dataclasses.replace(cfg, batch_size=batch)
    if exact_critic or cfg.n_critic <= 2:
        c = _counted(small)
    else:
        one = _counted(dataclasses.replace(small, n_critic=1))
        two = _counted(dataclasses.replace(small, n_critic=2))
        more = cfg.n_critic - 1
        c = IterationCost(one.flops + more * (two.flops - one.flops),
                          one.aten_ops + more * (two.aten_ops - one.aten_ops))  # fmt: skip
    if batch == cfg.batch_size:
        return c
    assert (c.flops * cfg.batch_size) % COUNT_BATCH == 0
    return IterationCost(c.flops * cfg.batch_size // COUNT_BATCH, c.aten_ops)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


MODE_PRECISION = {"exact": "fp32", "fast": "tf32", "fast-bf16": "bf16"}


def mode_precision(mode: str) -> str:
    """The peak a mode's MFU is measured against: exact mode computes in fp32 without TF32,
    --mode fast with TF32 matmuls, fast-bf16 with bf16 matmuls."""
    return MODE_PRECISION[mode]


def peak_tflops(device: torch.device, precision: str = "fp32") -> float | None:
    """The device's dense peak for ``precision``: $REPRODUCE_PEAK_TFLOPS, else the table by
    device name; None when unknown (CPUs, unlisted GPUs): MFU is then not reported."""
    override = envvars.number(ENV_PEAK)
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAKS, key=len, reverse=True):  # "H100 SXM" before "H100"
        parts = key.split()
        if all(p.lower() in name.lower() for p in parts):
            return PEAKS[key][precision]
    if "H100" in name:  # "NVIDIA H100 80GB HBM3" is the SXM part
        return PEAKS["H100 SXM"][precision]
    return None


def utilisation(flops_per_iter: int, it_per_s: float | None, peak: float | None) -> dict[str, Any]:
    """Achieved TFLOP/s and the fraction of peak (None where unknown)."""
    if not it_per_s:
        return {"tflops": None, "mfu": None}
    achieved = flops_per_iter * it_per_s / 1e12
    return {"tflops": achieved, "mfu": achieved / peak if peak else None}
