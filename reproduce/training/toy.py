"""The paper's 2-D toy experiments (Figure 1; SPEC.md C.1, C.2): data, MLPs, one resumable run.

Figure 1a trains a critic "to optimality" against a *fixed* generator (fake = the real batch
plus N(0, I)) on 8 Gaussians, 25 Gaussians and a Swiss roll, with weight clipping (c = 0.01)
and with the gradient penalty, and draws the critic's value surface. Figure 1b trains a WGAN
(12-layer ReLU MLP generator and critic, no batch norm) on the Swiss roll with clipping at
c = 0.1, 0.01, 0.001 and with the gradient penalty, and measures the norm of the gradient of
the critic loss with respect to every layer's activations, plus the critic's weights.

Every source of randomness is an explicit ``torch.Generator`` whose state is checkpointed, so
a toy run resumes exactly like an image run. A run directory holds config.json, status.json,
log.txt, checkpoints/ and, when completed, ``result.npz`` (arrays) and ``result.json``
(scalars), both written atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from architectures.layers import Linear

from ..config.run import SCHEMA_VERSION
from ..data.datasets import derive_seed
from ..errors import UserError
from ..fileio import atomic_write_bytes, atomic_write_json
from ..gan.penalties import gradient_penalty
from ..gan.procedures import Hyperparameters, OptimizerName, Procedure, get_procedure
from ..rundir import checkpoint
from ..rundir.lease import Refusal, claim
from ..rundir.rundir import RunDir
from .bookkeeping import Boundary, Outcome
from .engines import EagerSteps, Stats
from .trainer import one_iteration

TOY_DATASETS = ("8gaussians", "25gaussians", "swissroll")
# each toy method is one of the LSUN procedures (its objective, regulariser and critic
# schedule), at the toy code's hyperparameters (toy_config)
PROCEDURE_OF = {"clip": "wgan", "gp": "wgan-gp"}
METHODS = tuple(PROCEDURE_OF)
TOY_SCHEMA = 1
GRID_SIZE = 128  # value-surface resolution (the authors' N_POINTS)
GRID_RANGE = 3.0  # surface over [-3, 3]^2
HIST_BINS = 201


# --------------------------------------------------------------------------------------------
# data (gan_toy.py's generators; the Swiss roll is sklearn's make_swiss_roll formula)
# --------------------------------------------------------------------------------------------
class ToyData:
    """Batches of one toy distribution from an explicit generator (checkpointed)."""

    def __init__(self, name: str, batch: int, seed: int) -> None:
        if name not in TOY_DATASETS:
            raise ValueError(f"unknown toy dataset {name!r}")
        self.name, self.batch = name, batch
        self.gen = torch.Generator().manual_seed(derive_seed(seed, "toy-data"))
        self.pos = 0
        self.points: Tensor | None = None
        if name == "25gaussians":
            # a fixed set of 100,000 points, shuffled once, read in batches (gan_toy.py)
            g = torch.Generator().manual_seed(derive_seed(seed, "toy-25"))
            grid = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0])
            centres = torch.cartesian_prod(grid, grid)  # (25, 2)
            reps = 100_000 // 25
            pts = centres.repeat(reps, 1) + 0.05 * torch.randn(100_000, 2, generator=g)
            self.points = (pts / 2.828)[torch.randperm(100_000, generator=g)]

    def next(self) -> Tensor:
        b, g = self.batch, self.gen
        if self.name == "8gaussians":
            s = 1.0 / math.sqrt(2.0)
            centres = 2.0 * torch.tensor(
                [(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)]
            )
            idx = torch.randint(0, 8, (b,), generator=g)
            return (centres[idx] + 0.02 * torch.randn(b, 2, generator=g)) / 1.414
        if self.name == "25gaussians":
            assert self.points is not None
            if self.pos + b > len(self.points):
                self.pos = 0
            out = self.points[self.pos : self.pos + b]
            self.pos += b
            return out
        # sklearn.datasets.make_swiss_roll(b, noise=0.25), columns 0 and 2, divided by 7.5
        t = 1.5 * math.pi * (1 + 2 * torch.rand(b, generator=g))
        y = 21 * torch.rand(b, generator=g)
        xyz = torch.stack([t * torch.cos(t), y, t * torch.sin(t)], dim=1)
        xyz = xyz + 0.25 * torch.randn(b, 3, generator=g)
        return xyz[:, [0, 2]] / 7.5

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.pos = int(state["pos"])


# --------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------
class ToyMLP(nn.Module):
    """``layers`` x (Linear he, ReLU) of ``width`` units, then Linear glorot; no normalisation.

    The Figure 1a critic is ``ToyMLP(2, 512, 3, 1)`` (gan_toy.py: 2-512-512-512-1); Figure 1b's
    "12-layer ReLU MLPs" have 12 ReLU layers, so 13 layers of activations (12 hidden and the
    output), the 13 points of the figure."""

    def __init__(self, n_in: int, width: int, layers: int, n_out: int) -> None:
        super().__init__()
        dims = [n_in] + [width] * layers
        self.hidden = nn.ModuleList([Linear(a, b, init="he") for a, b in itertools.pairwise(dims)])
        self.out = Linear(dims[-1], n_out)

    def forward(self, x: Tensor) -> Tensor:
        for lin in self.hidden:
            x = torch.relu(lin(x))
        out = self.out(x)
        return out.squeeze(1) if out.shape[1] == 1 else out

    def activations(self, x: Tensor) -> list[Tensor]:
        """The output of every ReLU layer and the critic value: ``layers + 1`` tensors,
        layer 1 (nearest the input) to layer ``layers + 1`` (the output), retaining grads."""
        acts = []
        for lin in self.hidden:
            x = torch.relu(lin(x))
            acts.append(x)
        acts.append(self.out(x))
        for a in acts:
            a.retain_grad()
        return acts

    def weights(self) -> Tensor:
        """Every weight matrix entry (biases excluded), flattened."""
        ws = [lin.weight.detach().flatten() for lin in [*self.hidden, self.out]]
        return torch.cat(ws)


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToyConfig:
    """Everything that affects a toy run's numbers (hashed into its run id)."""

    figure: str  # "1a" (fixed generator, value surface) | "1b" (WGAN, gradient norms)
    dataset: str  # TOY_DATASETS
    method: str  # clip | gp
    clip: float | None  # c for clip
    gp_lambda: float | None  # lambda for gp (paper text: 10; the toy code: 0.1, SPEC.md E.12)
    # rmsprop-tf (clip) | adam-tf (gp), TF1's optimisers as the authors' gan_toy.py; toy runs
    # of the gp method made before TF1's Adam replaced PyTorch's ("adam") have other run ids
    optimizer: str
    lr: float
    beta1: float | None
    beta2: float | None
    layers: int  # ReLU layers of the critic (and of the generator, 1b)
    width: int
    batch_size: int
    n_critic: int
    iters: int  # generator iterations (1a: rounds of n_critic critic steps; no generator step)
    fixed_generator: bool  # 1a: fake = real + N(0, I)
    seed: int
    measure_batches: int = 16  # 1b: batches averaged for the gradient norms

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        payload = json.dumps(
            {"schema": SCHEMA_VERSION, "toy": TOY_SCHEMA, **self.to_dict()},
            sort_keys=True,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:10]

    @property
    def procedure(self) -> Procedure:
        return get_procedure(PROCEDURE_OF[self.method])

    @property
    def hyperparameters(self) -> Hyperparameters:
        return Hyperparameters(
            cast(OptimizerName, self.optimizer), self.lr, beta1=self.beta1, beta2=self.beta2,
            n_critic=self.n_critic, gp_lambda=self.gp_lambda, clip=self.clip,
        )  # fmt: skip

    @property
    def label(self) -> str:
        return f"clip c={self.clip:g}" if self.procedure.uses_clipping else "gradient penalty"

    @property
    def run_id(self) -> str:
        m = f"clip{self.clip:g}" if self.procedure.uses_clipping else "gp"
        return f"toy{self.figure}-{self.dataset}-{m}-s{self.seed}-{self.hash()}"


def toy_config(
    figure: str,
    dataset: str,
    method: str,
    *,
    clip: float | None = None,
    gp_lambda: float = 10.0,
    iters: int,
    seed: int = 0,
    width: int = 512,
    batch_size: int = 256,
    layers: int | None = None,
) -> ToyConfig:
    """The paper's settings for one toy run (SPEC.md C.1, C.2); optimisers as in gan_toy.py:
    clipping RMSProp(5e-5), the penalty Adam(1e-4, 0.5, 0.9); 5 critic steps per iteration."""
    if method not in METHODS:
        raise UserError(f"unknown toy method {method!r}; valid: {', '.join(METHODS)}")
    if dataset not in TOY_DATASETS:
        raise UserError(f"unknown toy dataset {dataset!r}; valid: {', '.join(TOY_DATASETS)}")
    if iters < 1 or width < 1 or batch_size < 2:
        raise UserError("toy runs need iters >= 1, width >= 1, batch size >= 2")
    is_clip = get_procedure(PROCEDURE_OF[method]).uses_clipping
    return ToyConfig(
        figure=figure,
        dataset=dataset,
        method=method,
        clip=(clip if clip is not None else 0.01) if is_clip else None,
        gp_lambda=None if is_clip else gp_lambda,
        optimizer="rmsprop-tf" if is_clip else "adam-tf",
        lr=5e-5 if is_clip else 1e-4,
        beta1=None if is_clip else 0.5,
        beta2=None if is_clip else 0.9,
        layers=layers if layers is not None else (3 if figure == "1a" else 12),
        width=width,
        batch_size=batch_size,
        n_critic=5,
        iters=iters,
        fixed_generator=figure == "1a",
        seed=seed,
    )


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
class ToyTrainer:
    """One toy run's networks, optimisers and random streams. Its iterations are the image
    runs': the procedure's objective and regulariser (``ToyConfig.procedure``), run by the
    eager engine (engines.py) on the shared schedule (``trainer.one_iteration``).

    Figure 1a's fixed generator is the identity on the latent ``real + N(0, I)``: fake is
    the real batch plus Gaussian noise, and there is no generator step."""

    def __init__(self, cfg: ToyConfig) -> None:
        self.cfg = cfg
        self.proc, self.hp = cfg.procedure, cfg.hyperparameters
        torch.manual_seed(derive_seed(cfg.seed, "toy-init"))
        self.D = ToyMLP(2, cfg.width, cfg.layers, 1)
        self.G: nn.Module = (
            nn.Identity() if cfg.fixed_generator else ToyMLP(2, cfg.width, cfg.layers, 2)
        )
        self.opt_d = self.proc.make_optimizer(self.D.parameters(), self.hp)
        self.opt_g = (
            None if cfg.fixed_generator else self.proc.make_optimizer(self.G.parameters(), self.hp)
        )
        self.steps = EagerSteps(self.G, self.D, self.proc, self.hp, self.opt_g, self.opt_d)
        self.data = ToyData(cfg.dataset, cfg.batch_size, cfg.seed)
        self.noise = torch.Generator().manual_seed(derive_seed(cfg.seed, "toy-noise"))
        self.iteration = 0
        self.train_seconds = 0.0

    def latent(self, real: Tensor, gen: torch.Generator) -> Tensor:
        """What the generator maps to a fake batch: N(0, I) noise, or for Figure 1a's fixed
        generator (the identity) the real batch plus that noise."""
        z = torch.randn(real.shape[0], 2, generator=gen)
        return real + z if self.cfg.fixed_generator else z

    def fake(self, real: Tensor, gen: torch.Generator) -> Tensor:
        with torch.no_grad():
            return self.G(self.latent(real, gen))

    def step(self) -> None:
        c = self.cfg

        def generator() -> Stats:
            return self.steps.generator(torch.randn(c.batch_size, 2, generator=self.noise))

        def critic(k: int) -> Stats:
            real = self.data.next()
            z = self.latent(real, self.noise)
            penalised = self.proc.uses_penalty
            alpha = torch.rand(c.batch_size, 1, generator=self.noise) if penalised else None
            return self.steps.critic(real, z, alpha)

        one_iteration(self.iteration, c.n_critic, None if self.opt_g is None else generator, critic)
        self.iteration += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "train_seconds": self.train_seconds,
            "critic": self.D.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "generator": self.G.state_dict(),
            "opt_g": self.opt_g.state_dict() if self.opt_g is not None else {},
            "data": self.data.state_dict(),
            "noise": self.noise.get_state(),
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.iteration, self.train_seconds = int(s["iteration"]), float(s["train_seconds"])
        self.D.load_state_dict(s["critic"])
        self.opt_d.load_state_dict(s["opt_d"])
        self.G.load_state_dict(s["generator"])
        if self.opt_g is not None:
            self.opt_g.load_state_dict(s["opt_g"])
        self.data.load_state_dict(s["data"])
        self.noise.set_state(s["noise"])

    # -- measurements ------------------------------------------------------------------------
    def layer_gradient_norms(self) -> np.ndarray:
        """(layers + 1,): L2 norm over the whole batch of d(critic loss)/d(activations of layer
        k), k = 1 (first ReLU layer) .. layers + 1 (critic output), averaged over
        ``measure_batches`` batches drawn from their own generator. The loss is the
        Wasserstein critic loss E[D(fake)] - E[D(real)] on one batch of each (the penalty is
        a property of the input gradient, not a loss whose gradient travels through the
        layers)."""
        c = self.cfg
        gen = torch.Generator().manual_seed(derive_seed(c.seed, "toy-measure"))
        data = ToyData(c.dataset, c.batch_size, derive_seed(c.seed, "toy-measure-data"))
        norms = np.zeros(c.layers + 1)
        for _ in range(c.measure_batches):
            real = data.next()
            fake = self.fake(real, gen)
            x = torch.cat([real, fake])
            acts = self.D.activations(x)
            sign = torch.cat([-torch.ones(len(real)), torch.ones(len(fake))]) / len(real)
            (acts[-1].squeeze(1) * sign).sum().backward()
            # float64: at c = 0.001 the squares of the entries underflow float32
            norms += np.array([float(a.grad.double().norm()) for a in acts])  # type: ignore[union-attr]
            self.D.zero_grad(set_to_none=True)
        return norms / c.measure_batches

    def surface(self) -> np.ndarray:
        """(128, 128) critic values on the grid over [-3, 3]^2 (rows: y, columns: x)."""
        lin = torch.linspace(-GRID_RANGE, GRID_RANGE, GRID_SIZE)
        yy, xx = torch.meshgrid(lin, lin, indexing="ij")
        with torch.no_grad():
            v = self.D(torch.stack([xx.flatten(), yy.flatten()], dim=1))
        return v.view(GRID_SIZE, GRID_SIZE).numpy()

    def input_slopes(self) -> np.ndarray:
        """||dD/dx|| at interpolates between real and fake samples (the penalty's points)."""
        c = self.cfg
        gen = torch.Generator().manual_seed(derive_seed(c.seed, "toy-slopes"))
        data = ToyData(c.dataset, c.batch_size, derive_seed(c.seed, "toy-slopes-data"))
        real = data.next()
        fake = self.fake(real, gen)
        alpha = torch.rand(c.batch_size, 1, generator=gen)
        _, slopes = gradient_penalty(self.D, real, fake, alpha)
        return slopes.detach().numpy()

    def results(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        c = self.cfg
        w = self.D.weights().numpy()
        top = float(np.abs(w).max()) or 1.0
        counts, edges = np.histogram(w, bins=HIST_BINS, range=(-top, top))
        arrays: dict[str, np.ndarray] = {
            "weight_hist_counts": counts,
            "weight_hist_edges": edges,
            "input_slopes": self.input_slopes(),
        }
        scalars: dict[str, Any] = {
            "weights_abs_max": top,
            "weights_std": float(w.std()),
            "slope_mean": float(arrays["input_slopes"].mean()),
        }
        if c.clip is not None:
            scalars["weights_at_clip_fraction"] = float((np.abs(w) >= 0.99 * c.clip).mean())
        if c.figure == "1a":
            arrays["surface"] = self.surface()
            real = ToyData(c.dataset, 1000, derive_seed(c.seed, "toy-plot")).next()
            arrays["real_points"] = real.numpy()
        else:
            g = self.layer_gradient_norms()
            arrays["layer_grad_norms"] = g
            scalars["layer_grad_norms"] = g.tolist()
            scalars["log10_ratio_input_to_output"] = float(np.log10(g[0] / g[-1]))
        return arrays, scalars


def run_toy(
    cfg: ToyConfig,
    run_dir: Path,
    *,
    stop: Callable[[], bool] = lambda: False,
    checkpoint_every: float = 300.0,
    threads: int | None = None,
) -> Outcome:
    """Train (or resume) one toy run to completion and write its results; exactly once per
    run directory (lease), like an image run."""
    rd = RunDir(run_dir)
    doc = {"schema": SCHEMA_VERSION, "kind": "toy", "run_id": run_dir.name,
           "config_hash": cfg.hash(), "config": cfg.to_dict()}  # fmt: skip
    claimed = claim(rd, doc)
    if isinstance(claimed, Refusal):
        return Outcome(claimed.state, claimed.iteration, claimed.message, run_dir)
    with claimed as lease:
        if threads is not None:
            torch.set_num_threads(threads)
        trainer = ToyTrainer(cfg)
        loaded = checkpoint.load_latest(rd.checkpoints_dir)
        if loaded is not None:
            trainer.load_state_dict(loaded[1])
            rd.log(f"resumed at iteration {trainer.iteration}")
        else:
            rd.log(f"started {run_dir.name}")
        boundary = Boundary(cfg.iters, checkpoint_every)

        def save() -> None:
            checkpoint.save_checkpoint(
                rd.checkpoints_dir, trainer.iteration, trainer.state_dict(),
                config_hash=cfg.hash(), keep=1,
            )  # fmt: skip

        def write_status(state: str) -> None:
            secs = trainer.train_seconds
            rd.write_status(state, iteration=trainer.iteration, iters=cfg.iters,
                            train_seconds=secs,
                            it_per_s=trainer.iteration / secs if secs else None)  # fmt: skip

        write_status("running")
        while trainer.iteration < cfg.iters:
            if lease.lost:  # another process took the run over: stop without writing
                rd.log("lease lost to another process; stopping without writing")
                return Outcome(
                    "lost", trainer.iteration, "another process took over the run", run_dir
                )
            t = time.perf_counter()
            trainer.step()
            trainer.train_seconds += time.perf_counter() - t
            done = trainer.iteration
            stopping, due = boundary.owes(done, stop())
            if due and done < cfg.iters:
                save()
                boundary.saved()
                write_status("interrupted" if stopping else "running")
            if stopping:
                rd.log(f"interrupted at iteration {done}")
                return Outcome("interrupted", done, "stopped", run_dir)
        arrays, scalars = trainer.results()
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        atomic_write_bytes(rd.toy_arrays_file, buf.getvalue())
        atomic_write_json(rd.toy_result_file, {"config": cfg.to_dict(), **scalars})
        write_status("completed")
        rd.log(f"completed {cfg.iters} iterations in {trainer.train_seconds:.1f} s")
        return Outcome("completed", trainer.iteration, "completed", run_dir)


def load_result(run_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    rd = RunDir(run_dir)
    with np.load(rd.toy_arrays_file) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(rd.toy_result_file.read_text())
