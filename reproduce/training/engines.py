"""How one critic step and one generator step are executed: the engines.

All engines compute the same step (gan/procedures.py holds the maths); they differ in how the
work reaches the device:

* ``EagerSteps`` (exact): PyTorch eager execution, the reference.
* ``GraphedSteps`` (exact, CUDA): the forward pass, the loss, the gradient penalty (its double
  backward included) and the backward pass of a whole critic step, and of a whole generator
  step, are each captured once in a CUDA graph with ``torch.cuda.graph`` and replayed, which
  removes the per-op launch cost (a ResNet-101 WGAN-GP iteration launches tens of thousands of
  kernels). The graphs replay the very kernels eager execution launches, on the same memory
  layout, so the numbers are bit-identical. ``make_graphed_callables`` cannot be used: it does
  not support the penalty's double backward.

  The optimiser update stays outside the graphs, as eager multi-tensor (foreach) kernels:
  Adam's bias corrections depend on the step count, which eager Adam keeps on the host; a
  capturable Adam keeps it on the device and computes the corrections in float32 there, which
  rounds differently from the reference. The update is a handful of foreach launches per step
  against thousands inside the graphs.
* ``CompiledSteps`` (fast modes): ``torch.compile`` of the step's forward computation, with
  the gradient penalty through ``torch.func.grad`` inside the compiled function, TF32
  matmuls, PyTorch's fused Adam, and under ``fast-bf16`` bf16 autocast with the penalty's
  gradient norm and every normalisation layer in float32. Close to exact, not bit-identical
  (tests/test_speed.py states and checks the tolerance).

Inputs (real batch, noise, interpolation weights) are always drawn by the trainer, outside
the engine, in the same order, so every engine consumes the same random streams.

Every engine counts its one-off set-up work in ``setups``: a CUDA graph capture (warm-up,
capture and check, failed attempts included) and the first call of a compiled step (which
traces and compiles it). The training loop counts the iterations in which ``setups`` moved as
set-up iterations, so steady-state throughput and MFU leave compilation out while the
training time (and so GPU-hours) keeps it.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..gan.penalties import gradient_penalty_func
from ..gan.procedures import Hyperparameters, Penalty, Procedure

Stats = dict[str, Tensor]
# torch.compile modes that use inductor's CUDA graph trees on a CUDA device
CUDA_GRAPH_TREE_MODES = ("reduce-overhead", "max-autotune")
NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)


class EagerSteps:
    """The reference execution of one critic step and one generator step."""

    name = "eager"

    def __init__(
        self,
        G: nn.Module,
        D: nn.Module,
        proc: Procedure,
        hp: Hyperparameters,
        opt_g: torch.optim.Optimizer | None,  # None: a fixed generator (toy Figure 1a)
        opt_d: torch.optim.Optimizer,
    ) -> None:
        self.G, self.D, self.proc, self.hp = G, D, proc, hp
        self.opt_g, self.opt_d = opt_g, opt_d
        self.note = ""  # why this engine runs instead of the one asked for, if so
        self.setups = 0  # one-off set-up steps so far (graph captures, compilations)

    @property
    def generator_optimizer(self) -> torch.optim.Optimizer:
        if self.opt_g is None:
            raise RuntimeError("a fixed generator has no generator step")
        return self.opt_g

    # -- the forward computations (what graphs capture and torch.compile traces) --------------
    def critic_forward(self, real: Tensor, z: Tensor, alpha: Tensor | None) -> tuple[Tensor, Stats]:
        res = self.proc.critic_step(self.G, self.D, real, z, alpha, self.hp)
        return res.loss, res.stats

    def generator_forward(self, z: Tensor) -> tuple[Tensor, Stats]:
        res = self.proc.generator_step(self.G, self.D, z, self.hp)
        return res.loss, res.stats

    # -- whole steps -----------------------------------------------------------------------------
    def critic(self, real: Tensor, z: Tensor, alpha: Tensor | None) -> Stats:
        loss, stats = self.critic_forward(real, z, alpha)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        self.proc.after_critic_step(self.D, self.hp)
        return stats

    def generator(self, z: Tensor) -> Stats:
        self.D.requires_grad_(False)  # no critic weight gradients in the generator step
        try:
            loss, stats = self.generator_forward(z)
            self.generator_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.generator_optimizer.step()
        finally:
            self.D.requires_grad_(True)
        return stats


def same_bits(a: Tensor, b: Tensor) -> bool:
    """Equal to the bit, NaN included (``torch.equal`` calls two NaNs unequal, so a step whose
    statistics hold a NaN would fail the graph's check and fall back to eager needlessly)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


class _Graph:
    """One captured step: the graph, its static inputs and its packed statistics."""

    def __init__(self, graph: Any, keys: list[str], packed: Tensor) -> None:
        self.graph, self.keys, self.packed = graph, keys, packed

    def replay(self) -> Stats:
        self.graph.replay()
        # the graph rewrites ``packed`` at every replay: keep a copy (one small kernel)
        return dict(zip(self.keys, self.packed.clone().unbind(), strict=True))


class GraphedSteps(EagerSteps):
    """Exact steps replayed from CUDA graphs (see the module docstring).

    Each step is captured at its first use, after a few warm-up executions on a side stream
    (cuDNN and cuBLAS pick their kernels and workspaces; the allocator settles). Warm-up runs
    the forward and backward passes only, never the optimiser, and restores every buffer
    afterwards, so it changes no state. The first replay is checked against the last warm-up
    (eager) execution to the bit before the graph is used. Gradients then live in the graph's
    memory: they are never set to None again, and every replay overwrites them.
    """

    name = "cuda-graphs"
    WARMUP = 3

    def __init__(self, *args: Any, batch_size: int, image_shape: tuple[int, ...], z_dim: int,
                 device: torch.device, penalty: bool) -> None:  # fmt: skip
        super().__init__(*args)
        if device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.device = device
        self.real = torch.zeros(batch_size, *image_shape, device=device)
        self.z_d = torch.zeros(batch_size, z_dim, device=device)
        self.z_g = torch.zeros(batch_size, z_dim, device=device)
        self.alpha = torch.zeros(batch_size, 1, 1, 1, device=device) if penalty else None
        self._critic: _Graph | None = None
        self._generator: _Graph | None = None

    def _capture(self, body: Callable[[], Stats], opt: torch.optim.Optimizer) -> _Graph:
        """Warm up, capture, and check the graph against eager execution.

        The check: the last warm-up execution is an eager run of the step on the same inputs
        and weights; the first replay must reproduce its gradients and statistics to the bit.
        If it does not (a library choosing other kernels under capture, say), RuntimeError:
        the caller falls back to eager execution, so exact mode stays exact on any GPU."""
        self.setups += 1
        buffers = [b for m in (self.G, self.D) for b in m.buffers()]
        saved = [b.clone() for b in buffers]
        params = [p for group in opt.param_groups for p in group["params"]]

        def restore_buffers() -> None:
            with torch.no_grad():
                for b, s in zip(buffers, saved, strict=True):
                    b.copy_(s)

        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                opt.zero_grad(set_to_none=True)
                stats = body()
            eager_stats = torch.stack([stats[k].detach().float() for k in stats])
            eager_grads = [None if p.grad is None else p.grad.clone() for p in params]
        current.wait_stream(side)
        restore_buffers()
        opt.zero_grad(set_to_none=True)  # backward allocates the gradients inside the graph
        graph = torch.cuda.CUDAGraph()
        # thread_local: the lease heartbeat thread may touch CUDA state during the capture
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            stats = body()
            keys = list(stats)
            packed = torch.stack([stats[k].float() for k in keys])
        graph.replay()
        same = same_bits(packed, eager_stats) and all(
            (g is None) == (p.grad is None) and (g is None or same_bits(g, p.grad))
            for g, p in zip(eager_grads, params, strict=True)
        )
        restore_buffers()
        if not same:
            raise RuntimeError("the captured step does not reproduce eager execution bit for bit")
        return _Graph(graph, keys, packed)

    def _critic_body(self) -> Stats:
        loss, stats = self.critic_forward(self.real, self.z_d, self.alpha)
        loss.backward()
        return stats

    def _generator_body(self) -> Stats:
        loss, stats = self.generator_forward(self.z_g)
        loss.backward()
        return stats

    def _fall_back(self, step: str, error: Exception) -> None:
        """A capture failed (an op that cannot be captured, a driver limit): run eagerly from
        now on, which computes the same bits, and say so in the run's log and status."""
        self.name = "eager"
        self.note = f"CUDA graph capture of the {step} step failed, running eagerly: {error}"
        self._critic = self._generator = None

    def critic(self, real: Tensor, z: Tensor, alpha: Tensor | None) -> Stats:
        if self.name == "eager":
            return super().critic(real, z, alpha)
        self.real.copy_(real)
        self.z_d.copy_(z)
        if self.alpha is not None and alpha is not None:
            self.alpha.copy_(alpha)
        if self._critic is None:
            try:
                self._critic = self._capture(self._critic_body, self.opt_d)
            except RuntimeError as e:
                self._fall_back("critic", e)
                return super().critic(real, z, alpha)
        stats = self._critic.replay()
        self.opt_d.step()
        self.proc.after_critic_step(self.D, self.hp)
        return stats

    def generator(self, z: Tensor) -> Stats:
        if self.name == "eager":
            return super().generator(z)
        self.z_g.copy_(z)
        if self._generator is None:
            self.D.requires_grad_(False)  # captured with the critic frozen
            try:
                self._generator = self._capture(self._generator_body, self.generator_optimizer)
            except RuntimeError as e:
                self._fall_back("generator", e)
                return super().generator(z)
            finally:
                self.D.requires_grad_(True)
        self.D.requires_grad_(False)  # frozen through the update, as in EagerSteps
        try:
            stats = self._generator.replay()
            self.generator_optimizer.step()
        finally:
            self.D.requires_grad_(True)
        return stats


class _Autocast(nn.Module):
    """Runs a network under bf16 autocast and returns float32 (losses are float32)."""

    def __init__(self, net: nn.Module, device_type: str) -> None:
        super().__init__()
        self.net, self.device_type = net, device_type

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.net(x).float()


def float32_norms_(net: nn.Module, device_type: str) -> nn.Module:
    """Make every normalisation layer of ``net`` compute in float32 under autocast (its input
    cast up, autocast off inside). Only the instances' ``forward`` changes: parameter names,
    state dicts and checkpoints stay those of the plain network."""
    for m in net.modules():
        if isinstance(m, NORM_TYPES):
            plain = type(m).forward

            def forward(self: nn.Module, x: Tensor, _plain: Any = plain) -> Tensor:
                with torch.autocast(device_type, enabled=False):
                    return _plain(self, x.float())

            m.forward = types.MethodType(forward, m)  # type: ignore[method-assign]
    return net


class CompiledSteps(EagerSteps):
    """Fast mode: ``torch.compile`` of the forward computations (see the module docstring)."""

    name = "compiled"

    def __init__(self, *args: Any, device: torch.device, bf16: bool, compile_mode: str) -> None:
        super().__init__(*args)
        G, D = self.G, self.D
        if bf16:
            float32_norms_(G, device.type)
            float32_norms_(D, device.type)
            G, D = _Autocast(G, device.type), _Autocast(D, device.type)
        self.G_run, self.D_run = G, D
        mode = None if compile_mode == "default" else compile_mode
        penalty: Penalty = gradient_penalty_func
        proc, hp = self.proc, self.hp

        def critic_forward(real: Tensor, z: Tensor, alpha: Tensor | None) -> tuple[Tensor, Stats]:
            res = proc.critic_step(G, D, real, z, alpha, hp, penalty=penalty)
            return res.loss, res.stats

        def generator_forward(z: Tensor) -> tuple[Tensor, Stats]:
            res = proc.generator_step(G, D, z, hp)
            return res.loss, res.stats

        self._critic_fn: Callable[..., tuple[Tensor, Stats]] = torch.compile(
            critic_forward, mode=mode, dynamic=False
        )
        self._generator_fn: Callable[..., tuple[Tensor, Stats]] = torch.compile(
            generator_forward, mode=mode, dynamic=False
        )
        self._called: set[str] = set()  # compiled functions already called (so compiled)
        # these modes turn on inductor's CUDA graph trees (on CUDA devices)
        self._graph_trees = compile_mode in CUDA_GRAPH_TREE_MODES

    def _call(
        self, name: str, fn: Callable[..., tuple[Tensor, Stats]], *args: Any
    ) -> tuple[Tensor, Stats]:
        """One compiled call. The statistics it returns are the caller's (``StatsBuffer``
        keeps them for up to ``log_every`` iterations), never the compiled function's own
        outputs: under CUDA graph trees those are overwritten by the graph's next replay."""
        if name not in self._called:
            self._called.add(name)
            self.setups += 1
        if not self._graph_trees:  # outputs are fresh tensors at every call
            return fn(*args)
        torch.compiler.cudagraph_mark_step_begin()  # each call is a new step
        loss, stats = fn(*args)
        return loss, {k: v.detach().clone() for k, v in stats.items()}

    def critic_forward(self, real: Tensor, z: Tensor, alpha: Tensor | None) -> tuple[Tensor, Stats]:
        return self._call("critic", self._critic_fn, real, z, alpha)

    def generator_forward(self, z: Tensor) -> tuple[Tensor, Stats]:
        return self._call("generator", self._generator_fn, z)
