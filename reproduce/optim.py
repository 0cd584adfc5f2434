"""Optimisers with TensorFlow 1 numerics (SPEC.md B.4).

``TFRMSprop`` is ``tf.train.RMSPropOptimizer`` (decay 0.9, momentum 0, epsilon 1e-10), which
differs from ``torch.optim.RMSprop`` in three ways that matter for WGAN-clip and LSGAN:

* the mean-square accumulator starts at ONES (PyTorch: zeros), so the first steps are tiny;
* epsilon sits INSIDE the square root: w -= lr g / sqrt(ms + eps);
* decay 0.9 (PyTorch's alpha defaults to 0.99).

The update follows TF's kernel (``training_ops.cc``, ApplyRMSProp) operation by operation:
``ms += (g^2 - ms) * (1 - decay); mom = mom * momentum + lr * g / sqrt(ms + eps); w -= mom``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


class TFRMSprop(Optimizer):
    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        decay: float = 0.9,
        momentum: float = 0.0,
        eps: float = 1e-10,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        super().__init__(params, dict(lr=lr, decay=decay, momentum=momentum, eps=eps))

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            lr, decay, momentum, eps = group["lr"], group["decay"], group["momentum"], group["eps"]
            ms, mom = [], []
            for p in params:
                state = self.state[p]
                if not state:
                    # TF1 initialises the "rms" slot with ones (tf.ones_initializer)
                    state["ms"] = torch.ones_like(p, memory_format=torch.preserve_format)
                    if momentum != 0:
                        state["mom"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                ms.append(state["ms"])
                if momentum != 0:
                    mom.append(state["mom"])
            # TF evaluates (1 - decay) in the variable's dtype (float32: 0.100000024 for 0.9)
            one_minus_decay = float(torch.tensor(1.0, dtype=params[0].dtype) - decay)
            # ms += (g^2 - ms) * (1 - decay)
            delta = torch._foreach_mul(grads, grads)
            torch._foreach_sub_(delta, ms)
            torch._foreach_mul_(delta, one_minus_decay)
            torch._foreach_add_(ms, delta)
            # upd = lr * g / sqrt(ms + eps)
            denom = torch._foreach_add(ms, eps)
            torch._foreach_sqrt_(denom)
            upd = torch._foreach_mul(grads, lr)
            torch._foreach_div_(upd, denom)
            if momentum != 0:
                # mom = mom * momentum + upd; w -= mom
                torch._foreach_mul_(mom, momentum)
                torch._foreach_add_(mom, upd)
                torch._foreach_sub_(params, mom)
            else:
                # momentum 0 (the only setting the paper uses): mom == upd exactly
                torch._foreach_sub_(params, upd)
        return loss
