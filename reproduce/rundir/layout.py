"""The contract of a results directory (``--results``), as ``RunDir`` is for one run: every
folder and shared file name under it is spelled here and nowhere else::

    <run id>/            one run (``RunDir``: its files are named in rundir.py)
    matrices/            <matrix id>.json (a matrix's cells), <matrix id>-summary.md and .csv
    tensorboard/         <arch>/<procedure>/s<seed>-<hash>/: one run's event files (board.py)
    benchmarks/          saved pytest-benchmark runs (``bench``), read for GPU packing
    figures/             the paper's figures: NAME.png and NAME.json (``figures``)
    report/              the HTML report (``report``)
    .submitit/           submitit's job folders, one per dispatch (dispatch.py)
    .cache/fidelity/     torch-fidelity's cached statistics of the real images (evaluator.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .rundir import RunDir


@dataclass(frozen=True)
class ResultsDir:
    path: Path

    def run(self, run_id: str) -> RunDir:
        return RunDir(self.path / run_id)

    @property
    def matrices(self) -> Path:
        return self.path / "matrices"

    def manifest(self, matrix_id: str) -> Path:
        return self.matrices / f"{matrix_id}.json"

    def manifests(self) -> list[Path]:
        return sorted(self.matrices.glob("*.json"))

    def summary(self, matrix_id: str, suffix: str) -> Path:
        """``suffix``: ``md`` or ``csv``."""
        return self.matrices / f"{matrix_id}-summary.{suffix}"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    def board(self, arch: str, procedure: str, seed: int, config_hash: str) -> Path:
        """One run's event files: one ``--logdir`` over ``tensorboard/`` shows a whole matrix."""
        return self.tensorboard / arch / procedure / f"s{seed}-{config_hash}"

    @property
    def benchmarks(self) -> Path:
        return self.path / "benchmarks"

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def report(self) -> Path:
        return self.path / "report"

    @property
    def submitit(self) -> Path:
        return self.path / ".submitit"

    @property
    def fidelity_cache(self) -> Path:
        return self.path / ".cache" / "fidelity"
