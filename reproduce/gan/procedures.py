"""The four training procedures of the LSUN experiment (SPEC.md B): DCGAN, LSGAN, WGAN with
weight clipping, WGAN-GP.

A procedure owns its objectives, its regulariser (penalty or clipping), its critic schedule
(n_critic) and its default optimiser settings under each named hyperparameter set. The
training loop (``training/loop.py``) only runs the schedule, toggles ``requires_grad_``, steps the
optimisers, logs and checkpoints; it contains no loss maths.

The registry imports no torch (the command line reads it for names, defaults and ``--help``):
the step and optimiser methods import what they run on their first call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from architectures import Norm

from ..registry import Registry
from . import losses

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

# (critic, real, fake, alpha) -> (penalty, slopes): penalties.gradient_penalty, or its
# torch.func form under torch.compile (fast modes)
Penalty = Callable[["nn.Module", "Tensor", "Tensor", "Tensor"], "tuple[Tensor, Tensor]"]

# adam-tf: TF1's AdamOptimizer as in the authors' code, eps added before the bias correction
# (SPEC.md B.4, E.4b; reproduce.gan.optim.TFAdam), the default wherever the paper uses Adam;
# adam-torch: PyTorch's Adam, a named departure; rmsprop-tf: TF1's RMSProp (SPEC.md B.4), the
# default wherever the paper uses RMSProp; rmsprop-torch: PyTorch's RMSprop, a named departure.
OptimizerName = Literal["adam-tf", "adam-torch", "rmsprop-tf", "rmsprop-torch"]
OPTIMIZERS: tuple[OptimizerName, ...] = ("adam-tf", "adam-torch", "rmsprop-tf", "rmsprop-torch")
ADAMS = ("adam-tf", "adam-torch")
# Old spellings in run directories written before the rename: "adam" was PyTorch's Adam, the
# default until TF1's Adam replaced it. Old configs are read through this table; run ids hash
# the old spelling, so the runs they name keep their ids (config.RunConfig.hash).
LEGACY_OPTIMIZERS: dict[str, OptimizerName] = {"adam": "adam-torch"}

# Named hyperparameter sets (SPEC.md B.3 and E.1):
#   paper:         the paper's Appendix E and the code at paper time (default)
#   official-code: the authors' repository at HEAD (fa66c57); differs only in WGAN-GP beta1 = 0
HPARAM_SETS = ("paper", "official-code")


@dataclass(frozen=True)
class Hyperparameters:
    """One procedure's optimisation settings. ``None`` means "not used by this procedure"."""

    optimizer: OptimizerName  # same optimiser type and settings for G and D (authors' code)
    lr: float
    beta1: float | None = None  # Adam only
    beta2: float | None = None  # Adam only
    n_critic: int = 1  # critic steps per generator step
    gp_lambda: float | None = None  # WGAN-GP only: weight of the gradient penalty
    clip: float | None = None  # WGAN (clipping) only: clip all critic parameters to [-c, c]


@dataclass
class StepResult:
    """What one critic or generator step reports: its loss (to back-propagate) and the
    detached statistics to log, all 0-dim tensors on the training device (no host sync)."""

    loss: Tensor
    stats: dict[str, Tensor]


@dataclass(frozen=True)
class Procedure:
    name: str  # stable short name (CLI, run ids)
    title: str  # column title of Figure 2
    spec: str  # SPEC.md section
    critic_loss: Callable[[Tensor, Tensor], Tensor]  # (d_real, d_fake) -> scalar
    generator_loss: Callable[[Tensor], Tensor]  # d_fake -> scalar
    uses_penalty: bool
    uses_clipping: bool
    default_critic_norm: Norm  # layer norm only in WGAN-GP critics (paper section 5.2)
    defaults: dict[str, Hyperparameters]  # per named hyperparameter set

    # -- the two objectives ----------------------------------------------------------------
    def critic_step(
        self,
        generator: nn.Module,
        critic: nn.Module,
        real: Tensor,  # (B, 3, 64, 64) in [-1, 1]
        z: Tensor,  # (B, 128)
        alpha: Tensor | None,  # (B, 1, 1, 1) ~ U[0, 1), WGAN-GP only
        hp: Hyperparameters,
        penalty: Penalty | None = None,  # None: penalties.gradient_penalty
    ) -> StepResult:
        import torch

        # The critic step does not update G: generate without building G's graph.
        with torch.no_grad():
            fake = generator(z)
        # Separate critic calls: in batch-norm critics real and fake are normalised with
        # separate batch statistics, as in the authors' code (SPEC.md E.7).
        d_real = critic(real)  # (B,)
        d_fake = critic(fake)  # (B,)
        loss = self.critic_loss(d_real, d_fake)
        stats = {
            "d_real": d_real.detach().mean(),
            "d_fake": d_fake.detach().mean(),
            "wdist": losses.wasserstein_estimate(d_real.detach(), d_fake.detach()),
        }
        if self.uses_penalty:
            # L_D += lambda * E[(||grad D(x_hat)||_2 - 1)^2]   (paper eq. 3)
            assert alpha is not None and hp.gp_lambda is not None
            if penalty is None:
                from .penalties import gradient_penalty

                penalty = gradient_penalty
            gp, _ = penalty(critic, real, fake, alpha)
            loss = loss + hp.gp_lambda * gp
            stats["gp"] = gp.detach()
        stats["critic_loss"] = loss.detach()  # includes the penalty (SPEC.md E.13)
        return StepResult(loss, stats)

    def generator_step(
        self, generator: nn.Module, critic: nn.Module, z: Tensor, hp: Hyperparameters
    ) -> StepResult:
        d_fake = critic(generator(z))  # (B,)
        loss = self.generator_loss(d_fake)
        return StepResult(loss, {"generator_loss": loss.detach()})

    def after_critic_step(self, critic: nn.Module, hp: Hyperparameters) -> None:
        if self.uses_clipping:
            from .penalties import clip_weights_

            assert hp.clip is not None
            clip_weights_(critic.parameters(), hp.clip)

    # -- optimisers --------------------------------------------------------------------------
    @staticmethod
    def make_optimizer(
        params: Iterable[Tensor], hp: Hyperparameters, fused: bool = False
    ) -> torch.optim.Optimizer:
        """The procedure's optimiser. Exact mode: multi-tensor (foreach) kernels, bit-identical
        to PyTorch's per-parameter reference loop (tests/test_speed.py checks every step).
        ``fused=True`` (fast modes only): PyTorch's fused Adam, one kernel for all
        parameters, which rounds differently (not bit-identical to the reference); TF1's Adam
        has no fused form and ignores it."""
        import torch

        from .optim import TFAdam, TFRMSprop

        if hp.optimizer == "adam-torch":
            assert hp.beta1 is not None and hp.beta2 is not None
            # PyTorch's Adam: eps added after the bias correction (SPEC.md B.4, E.4b).
            kind = {"fused": True} if fused else {"foreach": True}
            return torch.optim.Adam(params, lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=1e-8, **kind)
        if hp.optimizer == "adam-tf":
            assert hp.beta1 is not None and hp.beta2 is not None
            return TFAdam(params, lr=hp.lr, betas=(hp.beta1, hp.beta2), eps=1e-8)
        if hp.optimizer == "rmsprop-tf":
            return TFRMSprop(params, lr=hp.lr)
        if hp.optimizer == "rmsprop-torch":
            # a named departure: PyTorch's RMSprop defaults (alpha 0.99, eps 1e-8 outside sqrt)
            return torch.optim.RMSprop(params, lr=hp.lr, foreach=True)
        raise ValueError(f"unknown optimizer {hp.optimizer!r}")


PROCEDURES: Registry[Procedure] = Registry("procedure")


def register(proc: Procedure) -> Procedure:
    if set(proc.defaults) != set(HPARAM_SETS):
        raise ValueError(f"procedure {proc.name!r} must define every set in {HPARAM_SETS}")
    for hp in proc.defaults.values():
        if proc.uses_penalty != (hp.gp_lambda is not None):
            raise ValueError(f"procedure {proc.name!r}: gp_lambda must be set iff it penalises")
        if proc.uses_clipping != (hp.clip is not None):
            raise ValueError(f"procedure {proc.name!r}: clip must be set iff it clips")
    return PROCEDURES.register(proc.name, proc)


def get_procedure(name: str) -> Procedure:
    return PROCEDURES[name]


def _same(hp: Hyperparameters) -> dict[str, Hyperparameters]:
    return {"paper": hp, "official-code": hp}


# fmt: off
# Changelog of the named sets (both): TF1's Adam (adam-tf) replaced PyTorch's (then "adam",
# now adam-torch) as the Adam of dcgan and wgan-gp (SPEC.md B.4, E.4b); the run ids of
# those cells changed with it.
# DCGAN: TF Adam(2e-4, 0.5, 0.999), one critic step per generator step (SPEC.md B.3).
register(Procedure(
    "dcgan", "DCGAN", "B.1, B.3",
    losses.dcgan_critic_loss, losses.dcgan_generator_loss,
    uses_penalty=False, uses_clipping=False, default_critic_norm="batch",
    defaults=_same(Hyperparameters("adam-tf", 2e-4, beta1=0.5, beta2=0.999, n_critic=1)),
))
# LSGAN: TF RMSProp 1e-4, one critic step (SPEC.md B.3; searched over 1e-3, 2e-4, 1e-4).
register(Procedure(
    "lsgan", "LSGAN", "B.1, B.3",
    losses.lsgan_critic_loss, losses.lsgan_generator_loss,
    uses_penalty=False, uses_clipping=False, default_critic_norm="batch",
    defaults=_same(Hyperparameters("rmsprop-tf", 1e-4, n_critic=1)),
))
# WGAN with weight clipping: TF RMSProp 5e-5, c = 0.01, 5 critic steps (SPEC.md B.3).
register(Procedure(
    "wgan", "WGAN (clipping)", "B.1-B.3",
    losses.wasserstein_critic_loss, losses.wasserstein_generator_loss,
    uses_penalty=False, uses_clipping=True, default_critic_norm="batch",
    defaults=_same(Hyperparameters("rmsprop-tf", 5e-5, n_critic=5, clip=0.01)),
))
# WGAN-GP: TF Adam(1e-4, beta1, 0.9), lambda 10, 5 critic steps. beta1 = 0.5 in the paper's
# App. E and the paper-time code; 0 in Algorithm 1 and at the authors' HEAD (SPEC.md E.1).
register(Procedure(
    "wgan-gp", "WGAN-GP", "B.1-B.3",
    losses.wasserstein_critic_loss, losses.wasserstein_generator_loss,
    uses_penalty=True, uses_clipping=False, default_critic_norm="layer",
    defaults={
        "paper": Hyperparameters("adam-tf", 1e-4, beta1=0.5, beta2=0.9, n_critic=5, gp_lambda=10.0),
        "official-code": Hyperparameters("adam-tf", 1e-4, beta1=0.0, beta2=0.9, n_critic=5,
                                         gp_lambda=10.0),
    },
))
# fmt: on
