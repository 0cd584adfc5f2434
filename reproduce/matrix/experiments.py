"""Named experiments: each is a function that returns the cells it needs.

A cell is the user-level choice of one run (architecture, procedure, seed, and any
experiment-specific option overrides); ``matrix.expand`` resolves cells into ``RunConfig``s
with the shared options of a matrix invocation. The figures issue registers more experiments
here (each paper figure names its runs the same way).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from architectures import PAIRS

from ..gan.procedures import PROCEDURES
from ..registry import Registry


@dataclass(frozen=True)
class Cell:
    arch: str
    procedure: str
    seed: int
    # experiment-specific option overrides (keys of options.OPTIONS), applied over the
    # matrix-wide options; e.g. a figure that needs a particular optimiser
    overrides: tuple[tuple[str, Any], ...] = field(default=())

    def choices(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "procedure": self.procedure,
            "seed": self.seed,
            **dict(self.overrides),
        }


@dataclass(frozen=True)
class Selection:
    """What the user selected on the command line (None = the experiment's own default)."""

    archs: Sequence[str] | None = None
    procedures: Sequence[str] | None = None
    seeds: Sequence[int] = (0,)


ExperimentFn = Callable[[Selection], list[Cell]]


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    build: ExperimentFn
    # option defaults of this experiment (over the profile's, under explicit flags)
    options: Mapping[str, Any] = field(default_factory=dict)


EXPERIMENTS: Registry[Experiment] = Registry("experiment")


def register(
    name: str, description: str, options: Mapping[str, Any] | None = None
) -> Callable[[ExperimentFn], ExperimentFn]:
    def deco(fn: ExperimentFn) -> ExperimentFn:
        EXPERIMENTS.register(name, Experiment(name, description, fn, dict(options or {})))
        return fn

    return deco


def get_experiment(name: str) -> Experiment:
    return EXPERIMENTS[name]


@register("lsun", "Figure 2 / Appendix H: 7 architectures x 4 procedures on 64x64 LSUN bedrooms")
def lsun_matrix(sel: Selection) -> list[Cell]:
    """Rows A.1-A.7 (paper order) x DCGAN, LSGAN, WGAN (clipping), WGAN-GP, per seed.

    Every cell uses its procedure's own default hyperparameters (SPEC.md B.3): the paper's
    claim is that only WGAN-GP trains all seven with one shared set.
    """
    archs = sel.archs if sel.archs is not None else list(PAIRS)
    procs = sel.procedures if sel.procedures is not None else list(PROCEDURES)
    return [Cell(a, p, s) for s in sel.seeds for a in archs for p in procs]


# Figure 3 (SPEC.md C.5): the CIFAR-10 networks at DIM 128 with four training methods; the
# curve names of the figure, in its legend order. ``critic_norm`` follows gan_cifar.py: batch
# norm for clipping and DCGAN, none under the gradient penalty (the pair's penalty norm).
CIFAR_CURVES: tuple[tuple[str, str, tuple[tuple[str, Any], ...]], ...] = (
    ("Weight clipping (RMSProp)", "wgan", ()),
    ("Gradient penalty (RMSProp)", "wgan-gp", (("optimizer", "rmsprop-tf"), ("lr", 5e-5))),
    ("Gradient penalty (Adam)", "wgan-gp", ()),
    ("DCGAN (Adam)", "dcgan", ()),
)


def cifar_curve(cfg: Any) -> str:
    """The Figure 3 curve a resolved CIFAR run belongs to: the curve of its procedure whose
    overrides it carries, the most specific one when several match."""
    matches = [
        (len(overrides), title)
        for title, proc, overrides in CIFAR_CURVES
        if cfg.procedure == proc and all(getattr(cfg, k) == v for k, v in overrides)
    ]
    return max(matches)[1] if matches else f"{cfg.procedure} ({cfg.optimizer})"


@register(
    "cifar",
    "Figure 3: CIFAR-10, weight clipping vs gradient penalty (RMSProp, Adam) vs DCGAN",
    # DIM 128; Inception score every 1,000 iterations on 1,000 samples (SPEC.md C.5, E.14)
    {"dim": 128, "eval_every": 1000, "eval_samples": 1000},
)
def cifar_experiment(sel: Selection) -> list[Cell]:
    procs = sel.procedures
    return [
        Cell("cifar", proc, s, overrides)
        for s in sel.seeds
        for _, proc, overrides in CIFAR_CURVES
        if procs is None or proc in procs
    ]
