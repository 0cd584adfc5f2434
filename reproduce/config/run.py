"""Configuration: what a run computes (``RunConfig``, hashed into the run id) and how it is run
(``RuntimeConfig``: paths, device, logging cadence; never part of the id).

Every user-settable key is declared once in ``options.OPTIONS`` (type, default, help,
choices, bounds; the runtime ones as the fields of ``runtime.RuntimeConfig``); the command
line, ``--config`` files and validation are generated from that table. Here: the run config,
reading a config file, and resolving what the user gave into a validated ``RunConfig`` (the
procedure's defaults filled in, options that mean nothing for the choice refused) and
``RuntimeConfig`` (the checks that involve more than one option).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from architectures import (
    ALL_PAIRS,
    ArchitecturePair,
    MLPWidth,
    Norm,
    Padding,
    get_pair,
)

from ..errors import UserError
from ..fileio import MAX_JSON_BYTES, parse_json, read_regular
from ..gan.procedures import (
    ADAMS,
    LEGACY_OPTIMIZERS,
    Hyperparameters,
    OptimizerName,
    Procedure,
    get_procedure,
)
from .options import MODES, OPTIONS_BY_KEY, check_keys
from .runtime import BUILTIN_DATA, RuntimeConfig

# Bump when the meaning of a result-affecting field or of the training maths changes, so that
# old run directories are never resumed by code that would compute something else.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RunConfig:
    """Everything that affects the numbers a run produces, fully resolved (no "default"
    placeholders). Its canonical JSON, hashed, is the run id's suffix."""

    arch: str  # architectures.PAIRS key: one row of Figure 2 (SPEC.md A.1-A.7)
    procedure: str  # procedures.PROCEDURES key (SPEC.md B)
    hparams: str  # named set the optimiser values were resolved from: paper | official-code
    optimizer: OptimizerName  # adam-tf | adam-torch | rmsprop-tf | rmsprop-torch (G and D)
    lr: float  # learning rate of both networks
    beta1: float | None  # Adam only
    beta2: float | None  # Adam only
    n_critic: int  # critic steps per generator iteration
    gp_lambda: float | None  # WGAN-GP only
    clip: float | None  # WGAN (clipping) only
    critic_norm: Norm  # batch | layer | none, resolved from "auto" (SPEC.md A.0)
    padding: Padding  # tf-same (exact) | symmetric (the common PyTorch approximation)
    dim: int  # the authors' DIM, base width of every network (64 in the paper)
    batch_size: int  # images per critic step and per generator step (64 in the paper)
    iters: int  # generator iterations, the authors' ITERS (200,000 in the paper)
    seed: int  # seeds weights, noise, penalty interpolation and data order
    dataset: str  # dataset kind: demo | shapes | cache
    data_fingerprint: str  # content hash of the uint8 training images
    # exact (default: the reference numerics, bit-identical whatever the engine) | fast
    # (torch.compile, TF32) | fast-bf16 (fast plus bf16 autocast; penalty and norms in fp32).
    # Added after schema 1: it enters the run id only when it is not "exact", so every
    # existing run keeps its id.
    mode: str = "exact"
    # MLP generator width (SPEC.md E.19b): scaled (8 * dim) | fixed-512 (the authors' code) for
    # the mlp-generator pair, None (absent from the config) for every other pair. Added after
    # schema 1: a config of that pair without it is "scaled", and "scaled" stays out of the
    # run id, so every existing run keeps its id.
    mlp_width: MLPWidth | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        """A config from its ``to_dict`` form, written by this code or an older one."""
        return cls(**upgrade_config(d))

    @property
    def hyperparameters(self) -> Hyperparameters:
        return Hyperparameters(
            optimizer=self.optimizer,
            lr=self.lr,
            beta1=self.beta1,
            beta2=self.beta2,
            n_critic=self.n_critic,
            gp_lambda=self.gp_lambda,
            clip=self.clip,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["mode"] == "exact":
            del d["mode"]  # exact runs keep the config (and so the run id) they always had
        if d["mlp_width"] is None:
            del d["mlp_width"]  # recorded only where it means something
        return d

    @property
    def fast(self) -> bool:
        return MODES[self.mode].fast

    @property
    def bf16(self) -> bool:
        return MODES[self.mode].bf16

    def hash(self) -> str:
        """Short hash of the canonical JSON of this config plus the schema version, in the
        spelling of schema 1: a setting added since is left out at its old implicit value
        (mode exact, MLP width scaled) and a renamed value hashes under its old name
        (adam-torch as "adam"), so a run whose maths did not change keeps its id."""
        d = self.to_dict()
        if d.get("mlp_width") == "scaled":
            del d["mlp_width"]
        legacy = {new: old for old, new in LEGACY_OPTIMIZERS.items()}
        d["optimizer"] = legacy.get(d["optimizer"], d["optimizer"])
        payload = json.dumps({"schema": SCHEMA_VERSION, **d}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()[:10]

    @property
    def run_id(self) -> str:
        """Readable slug plus config hash: deterministic, so re-running finds the same run."""
        return f"{self.arch}-{self.procedure}-s{self.seed}-{self.hash()}"


def upgrade_config(d: Mapping[str, Any]) -> dict[str, Any]:
    """A stored run config (``config.json``'s "config", a manifest cell, a checkpoint's) in
    today's spelling: "adam" is adam-torch, and an mlp-generator config without a width is
    "scaled" (the only width before the choice existed). Anything else is left as it is."""
    out = dict(d)
    opt = out.get("optimizer")
    if isinstance(opt, str) and opt in LEGACY_OPTIMIZERS:
        out["optimizer"] = LEGACY_OPTIMIZERS[opt]
    arch = out.get("arch")
    if isinstance(arch, str) and arch in ALL_PAIRS and ALL_PAIRS[arch].has_mlp_width:
        out.setdefault("mlp_width", "scaled")
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or JSON file of option keys. A run directory's ``config.json`` is accepted
    as it is (its ``config`` and ``runtime`` sections are used)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config: no such file: {p}")
    try:
        text = read_regular(p, MAX_JSON_BYTES, follow=True).decode()  # a FIFO, a device: refused
        raw = tomllib.loads(text) if p.suffix == ".toml" else parse_json(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(f"--config: cannot parse {p}: {e}") from None
    if not isinstance(raw, dict):
        raise UserError(f"--config: {p} must hold a table/object of option keys")
    if "config" in raw and "schema" in raw:  # a run directory's config.json
        config, runtime = raw["config"], raw.get("runtime", {})
        if not isinstance(config, dict) or not isinstance(runtime, dict):
            raise UserError(f"--config: {p} is a run's config.json without valid sections")
        merged = {**runtime, **upgrade_config(config)}
        # keep the user options; drop what was resolved from them (dataset kind and
        # fingerprint, the weights' checksum), which is recomputed and checked again
        raw = {k: v for k, v in merged.items() if k in OPTIONS_BY_KEY}
    return check_keys(raw, f"--config {p}")


def _check_betas(beta1: float | None, beta2: float | None) -> None:
    """Adam's betas in [0, 1) (each option's other bounds are checked with its type)."""
    for key, b in (("beta1", beta1), ("beta2", beta2)):
        if b is not None:
            if not math.isfinite(b):
                raise UserError(f"--{key}: must be finite, got {b}")
            if not 0.0 <= b < 1.0:
                raise UserError(f"--{key}: must be in [0, 1), got {b}")


def _critic_norm(norm: str, pair: ArchitecturePair, proc: Procedure) -> Norm:
    """``auto`` resolved (the procedure's norm; layer norm under the penalty, SPEC.md A.0), and
    the combinations the paper rules out refused."""
    if norm == "auto":
        norm = proc.default_critic_norm if pair.critic_has_norm else "none"
        if proc.uses_penalty and pair.critic_has_norm:
            norm = pair.penalty_norm  # layer norm (SPEC.md A.0); none for CIFAR (C.5)
    elif not pair.critic_has_norm and norm != "none":
        raise UserError(f"--critic-norm: architecture {pair.name} has no critic normalisation")
    if proc.uses_penalty and norm == "batch":
        # The penalty is per-sample; batch norm couples samples (paper section 4).
        raise UserError(
            "--critic-norm: batch norm in a gradient-penalty critic is invalid (paper section "
            "4); use layer or none"
        )
    return cast(Norm, norm)


def resolve_run_config(
    choices: Mapping[str, Any], *, dataset: str, data_fingerprint: str
) -> RunConfig:
    """Fill defaults and validate. ``choices`` holds only what the user set (CLI or file);
    a key the user set that means nothing for the chosen procedure is an error."""
    given = {k: v for k, v in check_keys(choices, "options").items() if v is not None}

    def get(key: str) -> Any:
        return given.get(key, OPTIONS_BY_KEY[key].default)

    try:
        pair = get_pair(get("arch"))
    except KeyError as e:
        raise UserError(f"--arch: {e.args[0]}") from None
    try:
        proc = get_procedure(get("procedure"))
    except KeyError as e:
        raise UserError(f"--procedure: {e.args[0]}") from None
    base = proc.defaults[get("hparams")]

    optimizer = given.get("optimizer", base.optimizer)
    adam = optimizer in ADAMS
    # Options that mean nothing here are refused rather than silently ignored.
    for key, meaningful, why in (
        ("beta1", adam, f"optimizer {optimizer}"),
        ("beta2", adam, f"optimizer {optimizer}"),
        ("gp_lambda", proc.uses_penalty, f"procedure {proc.name}"),
        ("clip", proc.uses_clipping, f"procedure {proc.name}"),
        ("mlp_width", pair.has_mlp_width, f"architecture {pair.name}"),
    ):
        if key in given and not meaningful:
            raise UserError(f"{OPTIONS_BY_KEY[key].flag} means nothing for {why}")

    lr = float(given.get("lr", base.lr))
    beta1 = given.get("beta1", base.beta1) if adam else None
    beta2 = given.get("beta2", base.beta2) if adam else None
    if adam and (beta1 is None or beta2 is None):
        # the procedure has no Adam defaults (its paper optimiser is RMSProp): no silent guess
        raise UserError(
            f"--optimizer {optimizer} for procedure {proc.name} needs explicit --beta1 and --beta2"
        )
    n_critic = given.get("n_critic", base.n_critic)
    gp_lambda = given.get("gp_lambda", base.gp_lambda)
    clip = given.get("clip", base.clip)
    dim, batch, iters, seed = get("dim"), get("batch_size"), get("iters"), get("seed")

    _check_betas(beta1, beta2)
    if dim < 4 or dim % 4:
        raise UserError(f"--dim: must be a positive multiple of 4, got {dim}")
    norm = _critic_norm(get("critic_norm"), pair, proc)

    return RunConfig(
        arch=pair.name,
        procedure=proc.name,
        hparams=get("hparams"),
        optimizer=optimizer,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        n_critic=n_critic,
        gp_lambda=gp_lambda,
        clip=clip,
        critic_norm=norm,
        padding=get("padding"),
        dim=dim,
        batch_size=batch,
        iters=iters,
        seed=seed,
        dataset=dataset,
        data_fingerprint=data_fingerprint,
        mode=get("mode"),
        mlp_width=given.get("mlp_width", "scaled") if pair.has_mlp_width else None,
    )


def resolve_runtime_config(choices: Mapping[str, Any]) -> RuntimeConfig:
    given = {
        k: v
        for k, v in check_keys(choices, "options").items()
        if v is not None and OPTIONS_BY_KEY[k].section == "runtime"
    }
    rt = RuntimeConfig(**given)  # each option's type, choices and bounds: checked above
    if rt.judge == "demo" and rt.data not in BUILTIN_DATA and rt.eval_enabled:
        raise UserError(
            f"--judge: the demo judge knows only the eight modes of the built-in data "
            f"({', '.join(BUILTIN_DATA)}), but --data is {rt.data}; use --judge inception (or auto)"
        )
    if rt.cuda_graphs and rt.device == "cpu":
        raise UserError("--cuda-graphs: needs a CUDA device, but --device is cpu")
    if rt.cuda_graphs and choices.get("mode", "exact") != "exact":
        raise UserError(
            "--cuda-graphs: is for exact mode; under --mode fast use --compile-mode "
            "reduce-overhead for CUDA graphs of the compiled code"
        )
    if rt.name is not None and (
        not rt.name or "/" in rt.name or rt.name in (".", "..") or rt.name.startswith(".")
    ):
        raise UserError(f"--name: not a valid directory name: {rt.name!r}")
    return rt


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences ``key: old -> new`` between two config dicts."""
    keys = sorted(set(old) | set(new))
    return [
        f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
        for k in keys
        if old.get(k, "<unset>") != new.get(k, "<unset>")
    ]
