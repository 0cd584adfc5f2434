"""Optimisers with TensorFlow 1 numerics (SPEC.md B.4).

``TFRMSprop`` is ``tf.train.RMSPropOptimizer`` (decay 0.9, momentum 0, epsilon 1e-10), which
differs from ``torch.optim.RMSprop`` in three ways that matter for WGAN-clip and LSGAN:

* the mean-square accumulator starts at ONES (PyTorch: zeros), so the first steps are tiny;
* epsilon sits INSIDE the square root: w -= lr g / sqrt(ms + eps);
* decay 0.9 (PyTorch's alpha defaults to 0.99).

The update follows TF's kernel (``training_ops.cc``, ApplyRMSProp) operation by operation:
``ms += (g^2 - ms) * (1 - decay); mom = mom * momentum + lr * g / sqrt(ms + eps); w -= mom``.

``TFAdam`` is ``tf.train.AdamOptimizer`` (SPEC.md B.4, E.4b). It differs from
``torch.optim.Adam`` in where epsilon enters: TF folds both bias corrections into the step
size and adds epsilon to the UNcorrected sqrt(v),

    alpha = lr * sqrt(1 - b2^t) / (1 - b1^t);  w -= m * alpha / (sqrt(v) + eps),

which equals a PyTorch eps of eps / sqrt(1 - b2^t) (3.2x larger at step 1 with b2 = 0.9,
31.6x with b2 = 0.999). It follows TF's ApplyAdam kernel operation by operation, in float32:
``m += (g - m) * (1 - b1); v += (g^2 - v) * (1 - b2); w -= (m * alpha) / (sqrt(v) + eps)``,
with b1^t and b2^t kept as float32 running products (TF's ``beta1_power`` and
``beta2_power`` variables: initialised to b1 and b2, multiplied by them after every step).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


def _undecorated(method: Any) -> Any:
    return getattr(method, "__wrapped__", method)


class EagerOptimizer(Optimizer):
    """``torch.optim.Optimizer`` without its ``torch._disable_dynamo`` wrappers.

    torch wraps ``add_param_group``, ``zero_grad``, ``state_dict`` and ``load_state_dict`` so
    that ``torch.compile`` never traces into them; the wrapper's first call imports
    ``torch._dynamo``, a noticeable share of a short run's start (evaluation imports it
    anyway, through torch-fidelity's torchvision; ``tests/test_cli_startup.py`` checks that
    eager training does not).
    The harness never calls an optimiser inside a compiled function (fast modes compile the
    forward computations only, ``training/engines.py``), so its optimisers call the undecorated
    methods: the same code, without the import (``flops.FlopCounter`` does the same)."""

    add_param_group = _undecorated(Optimizer.add_param_group)
    zero_grad = _undecorated(Optimizer.zero_grad)
    state_dict = _undecorated(Optimizer.state_dict)
    load_state_dict = _undecorated(Optimizer.load_state_dict)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """The closure (if any) under autograd, then ``update`` of each group's parameters
        that have a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self.update(group, params, [p.grad for p in params])
        return loss

    def update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """One step of one parameter group, in place (``params`` and their ``grads``)."""
        raise NotImplementedError


class TFRMSprop(EagerOptimizer):
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

    def update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
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


def _f32(x: float) -> float:
    """x rounded to float32 (TF computes the Adam scalars in the variable's dtype)."""
    return float(torch.tensor(x, dtype=torch.float32))


def tf_adam_scalars(
    lr: float, beta1: float, beta2: float, beta1_power: float, beta2_power: float
) -> tuple[float, float, float]:
    """(alpha, 1 - b1, 1 - b2) as TF's kernel computes them, in float32 arithmetic."""
    f = torch.float32
    one = torch.tensor(1.0, dtype=f)
    alpha = (
        torch.tensor(lr, dtype=f)
        * torch.sqrt(one - torch.tensor(beta2_power, dtype=f))
        / (one - torch.tensor(beta1_power, dtype=f))
    )
    b1, b2 = torch.tensor(beta1, dtype=f), torch.tensor(beta2, dtype=f)
    return float(alpha), float(one - b1), float(one - b2)


class TFAdam(EagerOptimizer):
    """TF1's AdamOptimizer with foreach kernels (the per-parameter reference loop is in
    tests/test_speed.py, which checks every step bit for bit)."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    def update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        (beta1, beta2), eps = group["betas"], group["eps"]
        m, v = [], []
        for p in params:
            state = self.state[p]
            if not state:
                state["m"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["v"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            m.append(state["m"])
            v.append(state["v"])
        # the group's b1^t and b2^t: TF's beta1_power / beta2_power (float32 products)
        powers = group.setdefault("powers", [_f32(beta1), _f32(beta2)])
        alpha, one_minus_b1, one_minus_b2 = tf_adam_scalars(
            group["lr"], beta1, beta2, powers[0], powers[1]
        )
        # m += (g - m) * (1 - b1)
        delta = torch._foreach_sub(grads, m)
        torch._foreach_mul_(delta, one_minus_b1)
        torch._foreach_add_(m, delta)
        # v += (g^2 - v) * (1 - b2)
        delta = torch._foreach_mul(grads, grads)
        torch._foreach_sub_(delta, v)
        torch._foreach_mul_(delta, one_minus_b2)
        torch._foreach_add_(v, delta)
        # w -= (m * alpha) / (sqrt(v) + eps)
        upd = torch._foreach_mul(m, alpha)
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, _f32(eps))
        torch._foreach_div_(upd, denom)
        torch._foreach_sub_(params, upd)
        powers[0] = _f32(powers[0] * _f32(beta1))
        powers[1] = _f32(powers[1] * _f32(beta2))
