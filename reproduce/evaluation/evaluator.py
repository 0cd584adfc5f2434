"""Evaluation of one run: periodic and final Inception score / FID / KID, written to the run's
``metrics.jsonl``, plus the run's verdict.

The scores come from one of two judges, both through torch-fidelity's metric code: the
Inception network (the paper's protocol) or, on the demo data, the demo judge (judge.py), which
also counts the modes covered and the confident fraction. Every row records which judge, its
checksum and its thresholds.

Each evaluation is keyed by (iteration, kind); one already recorded is never computed again
(a resumed run reproduces the same weights, so it would give the same numbers). Samples come
from a noise stream seeded by (run seed, iteration), and every global RNG is restored
afterwards: evaluating never changes the training trajectory. The real-data statistics
(Inception score and diversity of the reference images, and their Inception features for
FID/KID) are computed once per dataset, weights file and reference size, and cached.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import rng
from ..config.run import RunConfig
from ..config.runtime import RuntimeConfig
from ..data.datasets import ImageDataset, derive_seed
from ..fileio import atomic_write_bytes, atomic_write_json, make_real_dirs, read_json
from ..rundir.layout import ResultsDir
from ..rundir.rundir import RunDir, final_metrics
from . import judge as demo_judge
from . import metrics


class Evaluator:
    def __init__(
        self,
        cfg: RunConfig,
        rt: RuntimeConfig,
        dataset: ImageDataset,
        run_dir: RunDir,
        device: torch.device,
        weights: metrics.InceptionWeights | demo_judge.Judge,
    ) -> None:
        self.cfg, self.rt, self.run_dir, self.device, self.weights = (
            cfg,
            rt,
            run_dir,
            device,
            weights,
        )
        self.judge = weights if isinstance(weights, demo_judge.Judge) else None
        if self.judge is not None:
            demo_judge.register()
            self.judge_net = self.judge.load(device)
        self.extractor = demo_judge.NAME if self.judge else metrics.FEATURE_EXTRACTOR
        self.every = rt.eval_interval(cfg.iters)
        # the reference features are cached beside the runs, never through a link there
        self.cache_root: Path | None = ResultsDir(Path(rt.results)).fidelity_cache
        try:
            make_real_dirs(Path(rt.results), self.cache_root)
        except OSError as e:
            run_dir.log(f"warning: reference features not cached ({e.strerror or e})")
            self.cache_root = None
        n_ref = min(rt.reference_samples, len(dataset))
        self.reference = metrics.reference_images(dataset.images, n_ref)
        # names the cached reference features: data content, subset size, weights
        self.reference_name = f"{dataset.fingerprint}-n{n_ref}-w{weights.sha256[:12]}"
        self.seconds = 0.0

    @property
    def path(self) -> Path:
        return self.run_dir.metrics_file

    def recorded(self) -> list[dict[str, Any]]:
        return self.run_dir.read_metrics()

    def due(self, iteration: int) -> bool:
        return iteration % self.every == 0 and iteration < self.cfg.iters

    def protocol(self, n: int) -> metrics.Protocol:
        return metrics.Protocol(num_samples=n, reference_samples=len(self.reference))

    def real_stats(self, protocol: metrics.Protocol) -> dict[str, float]:
        """IS and diversity of the reference images (same protocol), cached as JSON."""
        key = f"{self.reference_name}-s{protocol.splits}-real.json"
        path = self.cache_root / key if self.cache_root is not None else None
        try:
            if path is not None:
                return dict(read_json(path))
        except (OSError, ValueError):
            pass
        ref_protocol = metrics.Protocol(**{**protocol.to_dict(), "fid": False, "kid": False})
        scores = metrics.inception_metrics(
            self.reference, self.weights, ref_protocol, self.device,
            feature_extractor=self.extractor, images_name=self.reference_name,
            cache_root=self.cache_root, log=self.run_dir.log,
        )  # fmt: skip
        stats = {
            "real_" + metrics.IS_MEAN: scores[metrics.IS_MEAN],
            "real_" + metrics.IS_STD: scores[metrics.IS_STD],
            "real_diversity": metrics.diversity(self.reference),
        }
        stats |= {f"real_{k}": v for k, v in self.mode_stats(self.reference).items()}
        if path is not None:
            atomic_write_json(path, stats)
        return stats

    def mode_stats(self, images: torch.Tensor) -> dict[str, Any]:
        """Modes covered and confident fraction (the demo judge only; {} for Inception)."""
        if self.judge is None:
            return {}
        _, logits = demo_judge.predict(self.judge_net, images.to(self.device))
        return demo_judge.mode_stats(logits.cpu(), self.judge.thresholds)

    def provenance(self, protocol: metrics.Protocol) -> dict[str, Any]:
        if self.judge is None:
            assert isinstance(self.weights, metrics.InceptionWeights)
            return metrics.provenance(self.weights, protocol)
        return {
            **self.judge.provenance(),
            "feature_extractor": demo_judge.NAME,
            "torch_fidelity": metrics.torch_fidelity_version(),
            "protocol": protocol.to_dict(),
        }

    def evaluate(
        self, generator: nn.Module, iteration: int, kind: str, train_seconds: float | None = None
    ) -> dict[str, Any] | None:
        """Evaluate unless (iteration, kind) is already recorded; append the row atomically.
        ``train_seconds``: the training time so far (the wall-clock axis of Figure 3)."""
        if any(r.get("iter") == iteration and r.get("kind") == kind for r in self.recorded()):
            return None
        t = time.perf_counter()
        n = self.rt.samples(kind)
        protocol = self.protocol(n)
        with rng.preserved():
            images = metrics.generate_uint8(
                generator, n, self.cfg.batch_size, derive_seed(self.cfg.seed, "eval", iteration),
                self.device,
            )  # fmt: skip
        scores = metrics.inception_metrics(
            images, self.weights, protocol, self.device, feature_extractor=self.extractor,
            reference=self.reference, reference_name=self.reference_name,
            cache_root=self.cache_root, log=self.run_dir.log,
        )  # fmt: skip
        row: dict[str, Any] = {
            "iter": iteration,
            "kind": kind,
            "mode": self.cfg.mode,  # exact or fast numbers: never mixed silently
            "train_seconds": train_seconds,
            **scores,
            "diversity": metrics.diversity(images),
            **self.mode_stats(images),
            **self.real_stats(protocol),
            "seconds": time.perf_counter() - t,
            "sample_seed": derive_seed(self.cfg.seed, "eval", iteration),
            "reference": self.reference_name,
            **self.provenance(protocol),
        }
        rows = [*self.recorded(), row]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in rows).encode())
        self.seconds += row["seconds"]
        return row


def write_verdict(
    run_dir: Path, state: str, thresholds: metrics.VerdictThresholds
) -> dict[str, Any]:
    v = metrics.verdict(state, final_metrics(run_dir), thresholds)
    atomic_write_json(RunDir(run_dir).verdict_file, v)
    return v
