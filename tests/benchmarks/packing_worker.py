"""One cell of the packing benchmark, in its own process (as the local executor runs cells).

Builds the cell's trainer, runs two warm-up iterations, prints ``ready`` and waits for a line
on stdin, so that every process of a packing measurement starts together; then trains
``--iters`` generator iterations, synchronises the device and prints ``done``."""

from __future__ import annotations

import argparse
import os
import sys

import torch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", required=True)
    p.add_argument("--procedure", required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--iters", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    a = p.parse_args()

    from reproduce.config.run import resolve_run_config
    from reproduce.data.datasets import load_demo
    from reproduce.training.trainer import Trainer, configure_numerics

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    ds = load_demo()
    cfg = resolve_run_config(
        {"arch": a.arch, "procedure": a.procedure, "dim": a.dim, "batch_size": a.batch_size,
         "iters": 10**9},
        dataset=ds.kind, data_fingerprint=ds.fingerprint,
    )  # fmt: skip
    configure_numerics(device)
    trainer = Trainer(cfg, ds, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        trainer.step()
    sync()
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(a.iters):
        trainer.step()
    sync()
    print("done", flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
