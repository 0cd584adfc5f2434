"""The train section's bit checks: a resumed run against the same run uninterrupted, and
CUDA-graph replays against eager execution, every weight and statistic compared to the bit."""

from __future__ import annotations

import time
from typing import Any

from ..rundir.rundir import RunDir
from .gpucheck import Settings


def _device(s: Settings) -> Any:
    import torch

    return torch.device(s.device)


def _sync(s: Settings) -> None:
    import torch

    if s.device == "cuda":
        torch.cuda.synchronize()


def _config(s: Settings, arch: str, procedure: str, mode: str = "exact") -> Any:
    from ..config.run import resolve_run_config
    from ..data.datasets import load_demo

    ds = load_demo()
    return resolve_run_config(
        {"arch": arch, "procedure": procedure, "dim": s.dim, "batch_size": s.batch,
         "iters": 10**6, "mode": mode},
        dataset=ds.kind, data_fingerprint=ds.fingerprint,
    )  # fmt: skip


def resume_bit_check(s: Settings, rd: RunDir) -> dict[str, Any]:
    """The run stopped twice by SIGTERM and resumed once, against the same run uninterrupted:
    a fresh trainer of its config on the same device and engine, stepped to the newest
    checkpoint's iteration; every weight, optimiser state and the data position compared
    to the bit."""
    import torch

    from ..config.run import RunConfig
    from ..data.datasets import load_demo
    from ..rundir import checkpoint
    from ..training.trainer import Trainer, configure_numerics

    loaded = checkpoint.load_latest(rd.checkpoints_dir)
    if loaded is None:
        return {"identical": False, "error": "no checkpoint loads"}
    _, state, _ = loaded
    device = _device(s)
    cfg = RunConfig.from_dict(state["config"])
    configure_numerics(device, cfg.fast)
    t = Trainer(cfg, load_demo(), device, data_placement="device")
    t0 = time.perf_counter()
    while t.iteration < state["iteration"]:
        t.step()
    _sync(s)
    seconds = time.perf_counter() - t0
    mine = t.state_dict({})
    differ = [
        f"{part}.{k}"
        for part in ("generator", "critic")
        for k, v in state[part].items()
        if not torch.equal(v.cpu(), mine[part][k].cpu())
    ]
    optimisers_equal = all(
        _same_tree(state[o]["state"], mine[o]["state"]) for o in ("opt_g", "opt_d")
    )
    same_data = state["data"] == mine["data"]
    return {"iterations": int(state["iteration"]), "engine": t.steps.name, "seconds": seconds,
            "weights_differing": differ, "optimisers_equal": optimisers_equal,
            "data_position_equal": same_data,
            "identical": not differ and optimisers_equal and same_data}  # fmt: skip


def _same_tree(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(_same_tree(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_tree(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def graphs_bit_check(s: Settings, iters: int = 6) -> dict[str, Any]:
    """Baseline WGAN-GP at the section's width and batch: ``iters`` iterations replayed from
    CUDA graphs against eager execution, every weight and statistic compared to the bit."""
    import torch

    from ..data.datasets import load_demo
    from ..training.trainer import Trainer, configure_numerics

    device = _device(s)
    cfg = _config(s, "baseline", "wgan-gp")
    configure_numerics(device)
    runs = {}
    for graphs in (False, True):
        t = Trainer(cfg, load_demo(), device, data_placement="device", cuda_graphs=graphs)
        rows = [{k: v.item() for k, v in t.step().items()} for _ in range(iters)]
        runs[graphs] = (t, rows, t.steps.name, t.steps.note)
    (e, e_rows, _, _), (g, g_rows, engine, note) = runs[False], runs[True]
    differ = [
        f"{net}.{n}"
        for net, a, b in (("G", e.G, g.G), ("D", e.D, g.D))
        for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True)
        if not torch.equal(p, q)
    ]
    return {"iterations": iters, "engine": engine, "note": note, "stats_equal": e_rows == g_rows,
            "weights_differing": differ, "identical": engine == "cuda-graphs" and not differ
            and e_rows == g_rows}  # fmt: skip
