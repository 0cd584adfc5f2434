"""How many cells share a GPU, from a saved packing benchmark (``bench -k packing``): the
newest one of this GPU model at the cells' width and batch, or a given file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..rundir.layout import ResultsDir
from ..speed.bench import recommended_packing
from .dispatch import Packing


def packing_from_benchmark(
    text: str, gpus: Sequence[int], results: Path, sizes: set[tuple[int, int]], flag: str
) -> Packing:
    """``--cells-per-gpu auto`` or ``FILE.json``: the recommendation of a packing benchmark
    of this GPU model (the name CUDA reports; any GPU where CUDA is absent) at the width and
    batch size of every cell."""
    import torch

    here = torch.cuda.get_device_name(gpus[0]) if torch.cuda.is_available() else None

    def mismatch(advice: Any) -> str | None:
        if here is not None and advice.device != here:
            return f"was measured on {advice.device}, not on this machine's {here}"
        if sizes and sizes != {(advice.dim, advice.batch)}:
            want = ", ".join(f"width {d}, batch {b}" for d, b in sorted(sizes))
            return f"was measured at width {advice.dim}, batch {advice.batch}; the cells: {want}"
        return None

    def packing(advice: Any, path: Path) -> Packing:
        source = f"{path}: {advice.device}, width {advice.dim}, batch {advice.batch}"
        return Packing(1, tuple(sorted(advice.cells.items())), source)

    if text != "auto":
        advice = recommended_packing(Path(text), flag)
        if advice is None:
            raise UserError(f"{flag}: {text} holds no packing benchmark of one GPU and size")
        why = mismatch(advice)
        if why:
            raise UserError(f"{flag}: {text} {why}")
        return packing(advice, Path(text))
    folder = ResultsDir(results).benchmarks
    files = sorted(folder.glob("*.json"), key=lambda f: f.stat().st_mtime, reverse=True)
    for f in files:
        try:
            advice = recommended_packing(f, flag)
        except UserError:
            continue  # not a benchmark file (or an unfinished one)
        if advice is not None and mismatch(advice) is None:
            return packing(advice, f)
    of = f" of {here}" if here else " of a GPU"
    at = " and ".join(f"width {d}, batch {b}" for d, b in sorted(sizes))
    if len(sizes) == 1:  # the size to measure at; no size known: the benchmark's own default
        [(d, b)] = sizes
        env = f"BENCH_DIM={d} BENCH_BATCH={b} "
    else:
        env = "BENCH_DIM=.. BENCH_BATCH=.. " if sizes else ""
    raise UserError(
        f"{flag} auto: no packing benchmark{of}{' at ' + at if at else ''} under {folder}; "
        f"measure one with `{env}python -m reproduce bench -k packing "
        f"--results {results}`, or give N or ARCH=N,..."
    )
