"""Every user-settable key, declared once: ``OPTIONS`` (type, default, help, choices, bounds,
section). The result-affecting options are declared here (``RUN_OPTIONS``: the user's choices,
which ``config.resolve_run_config`` turns into a ``RunConfig``); the runtime options are the
fields of ``runtime.RuntimeConfig``, whose metadata holds their help, choices and bounds. The
command line's options (cli/common.py), ``--config`` files and the checks of keys, types,
choices and bounds are generated from this table, so a key cannot exist in one place and be
missing in another, and the procedures' defaults shown in the help come from the procedures.
Unknown keys, wrong types and values out of bounds are errors. No torch here."""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from architectures import ALL_PAIRS, MLP_WIDTHS, NORMS, PADDINGS

from ..errors import UserError, did_you_mean
from ..gan.procedures import HPARAM_SETS, LEGACY_OPTIMIZERS, OPTIMIZERS, PROCEDURES
from ..registry import Registry
from .runtime import RuntimeConfig


@dataclass(frozen=True)
class NumericsMode:
    """How a run's arithmetic executes (trainer.make_steps, training/engines.py); a mode other than
    exact is part of the run id."""

    fast: bool  # torch.compile and TF32: close to exact, not bit-identical
    bf16: bool = False  # bf16 autocast on top (the penalty and norms in fp32)


MODES: Registry[NumericsMode] = Registry("mode")
MODES.register("exact", NumericsMode(fast=False))
MODES.register("fast", NumericsMode(fast=True))
MODES.register("fast-bf16", NumericsMode(fast=True, bf16=True))
SEED_MAX = 2**64 - 1  # torch.manual_seed's range


@dataclass(frozen=True)
class Option:
    """One user-settable key: the flag is ``--`` + key with dashes."""

    key: str
    type: type
    default: Any  # shown in --help; None = "the procedure's default" or "off" (see help)
    help: str
    choices: tuple[str, ...] | None = None
    section: str = "run"  # run (result-affecting) | runtime
    # Bounds, checked with the type (the upper ones are generous: far beyond any sensible run,
    # small enough that nothing overflows a float32 tensor, a uint64 seed or the process).
    # minimum is inclusive unless ``above``; every float must also be finite.
    minimum: float | None = None
    above: bool = False
    maximum: float | None = None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


def _number(v: float) -> str:
    """2e-4, 5e-5, 0.5, 10: as a person writes a hyperparameter."""
    return re.sub(r"e-0*(\d)", r"e-\1", f"{v:.0e}") if 0 < abs(v) < 1e-3 else f"{v:g}"


def procedure_defaults(key: str) -> str:
    """The procedures' own defaults of one hyperparameter, for the help: ``dcgan 2e-4, lsgan
    1e-4, ...``; ``wgan-gp 0.5 paper / 0.0 official-code`` where the named sets differ; the
    procedures where it means nothing are left out."""
    parts = []
    for name, proc in PROCEDURES.items():
        values = {hp: getattr(proc.defaults[hp], key) for hp in HPARAM_SETS}
        if all(v is None for v in values.values()):
            continue
        if len(set(values.values())) == 1:
            v = next(iter(values.values()))
            parts.append(f"{name} {v if isinstance(v, str) else _number(v)}")
        else:
            shown = " / ".join(f"{_number(v)} {hp}" for hp, v in values.items())
            parts.append(f"{name} {shown}")
    return ", ".join(parts)


def _the_procedures(key: str) -> str:
    return f"default: the procedure's ({procedure_defaults(key)})"


# fmt: off
RUN_OPTIONS: tuple[Option, ...] = (
    Option("arch", str, "baseline", "architecture pair (a row of Figure 2, or cifar: the "
           "32x32 networks of Figure 3)", tuple(ALL_PAIRS)),
    Option("procedure", str, "wgan-gp", "training procedure", tuple(PROCEDURES)),
    Option("hparams", str, "paper", "named hyperparameter set: 'paper' = App. E (WGAN-GP Adam "
           "beta1 0.5); 'official-code' = the authors' HEAD (beta1 0)", HPARAM_SETS),
    Option("optimizer", str, None, f"optimiser for G and D; {_the_procedures('optimizer')}. "
           "adam-tf is TF1's Adam as in the authors' code (eps added before the bias "
           "correction: SPEC.md B.4, E.4b); adam-torch is PyTorch's Adam and rmsprop-torch "
           "PyTorch's RMSprop, named departures", OPTIMIZERS),
    Option("lr", float, None, f"learning rate; {_the_procedures('lr')}", minimum=0, above=True,
           maximum=10.0),
    Option("beta1", float, None, f"Adam beta1; {_the_procedures('beta1')}"),
    Option("beta2", float, None, f"Adam beta2; {_the_procedures('beta2')}"),
    # n_critic bounds how long the stop flag can go unread (one critic step per n_critic)
    Option("n_critic", int, None, "critic steps per generator iteration; "
           f"{_the_procedures('n_critic')}", minimum=1, maximum=1000),
    Option("gp_lambda", float, None, "gradient-penalty weight (wgan-gp only); "
           f"{_the_procedures('gp_lambda')}", minimum=0, maximum=1e6),
    Option("clip", float, None, f"weight-clipping bound c (wgan only); {_the_procedures('clip')}",
           minimum=0, above=True, maximum=1e6),
    Option("critic_norm", str, "auto", "critic normalisation: auto = layer norm under wgan-gp, "
           "batch norm otherwise, none for no-norm", ("auto", *NORMS)),
    Option("padding", str, "tf-same", "convolution padding: tf-same (exact TF emulation) or "
           "symmetric (the usual PyTorch approximation, a 1-pixel shift)", PADDINGS),
    Option("dim", int, 64, "base width DIM of every network (paper: 64); a multiple of 4",
           maximum=1024),
    Option("mlp_width", str, "scaled", "hidden width of the mlp-generator pair's MLP (SPEC.md "
           "E.19b): scaled = 8 * dim (scales with the other networks) or fixed-512 (the "
           "authors' code: 512 whatever dim is); equal at dim 64", MLP_WIDTHS),
    Option("batch_size", int, 64, "batch size of every critic and generator step", minimum=1,
           maximum=65_536),
    Option("iters", int, 200_000, "generator iterations (the authors' ITERS)", minimum=1,
           maximum=10**9),
    Option("seed", int, 0, "random seed (weights, noise, interpolation, data order)",
           minimum=0, maximum=SEED_MAX),
    Option("mode", str, "exact", "numerics: exact (the reference fp32 maths; CUDA graphs and "
           "foreach optimisers change no bit) | fast (torch.compile, the penalty through "
           "torch.func.grad, TF32 matmuls; close to exact, not bit-identical) | fast-bf16 "
           "(fast plus bf16 autocast, the penalty and norms in fp32). --fast is --mode fast. "
           "The mode is part of the run id and shown in every table", tuple(MODES)),
)
# fmt: on


def _runtime_options() -> tuple[Option, ...]:
    """The runtime options: the fields of RuntimeConfig that carry an ``option`` (their type
    is the annotation without None)."""
    hints = typing.get_type_hints(RuntimeConfig)
    out = []
    for f in fields(RuntimeConfig):
        if "option" not in f.metadata:
            continue  # set by the code (the weights' checksum), not by the user
        kind = next(
            t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None)
        )
        out.append(Option(f.name, kind, f.default, **f.metadata["option"], section="runtime"))
    return tuple(out)


OPTIONS: tuple[Option, ...] = RUN_OPTIONS + _runtime_options()
OPTIONS_BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}


def check_range(flag: str, value: float, maximum: float) -> None:
    """One line naming the flag for a non-finite float or a value above ``maximum``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{flag}: must be finite, got {value}")
    if value > maximum:
        shown = f"{maximum:,}" if isinstance(maximum, int) else f"{maximum:g}"
        got = f"{value:,}" if isinstance(value, int) else f"{value:g}"  # 2**64, not 1.84467e+19
        raise UserError(f"{flag}: must be at most {shown}, got {got}")


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: a million-element list given as a seed
    is one short line, not 7.9 MB of one."""
    text = repr(value) if not isinstance(value, list | dict | tuple | str) or len(value) < 1000 \
        else f"{type(value).__name__} of {len(value):,} items"  # fmt: skip
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _check_type(opt: Option, value: Any) -> Any:
    """Return ``value`` as the option's type, or raise UserError naming the key."""
    if value is None:
        return None
    if opt.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if opt.type is bool and not isinstance(value, bool):
        raise UserError(f"{opt.flag}: expected true or false, got {_shown(value)}")
    if opt.type is not bool and isinstance(value, bool):
        raise UserError(f"{opt.flag}: expected {opt.type.__name__}, got {_shown(value)}")
    if not isinstance(value, opt.type):
        raise UserError(f"{opt.flag}: expected {opt.type.__name__}, got {_shown(value)}")
    if opt.choices is not None and value not in opt.choices:
        hint = did_you_mean(str(value), opt.choices)
        if opt.key == "optimizer" and value in LEGACY_OPTIMIZERS:
            hint = (
                f" (PyTorch's Adam, once the default, is now {LEGACY_OPTIMIZERS[value]}; TF1's "
                "Adam, adam-tf, is the default)"
            )
        raise UserError(
            f"{opt.flag}: unknown value {_shown(value)}{hint}; valid: {', '.join(opt.choices)}"
        )
    if isinstance(value, int | float):
        if opt.maximum is not None:
            check_range(opt.flag, value, opt.maximum)
        check_minimum(opt, value)
    return value


def check_minimum(opt: Option, value: float) -> None:
    """One line naming the flag for a value below the option's minimum."""
    if opt.minimum is None:
        return
    low = opt.minimum
    if opt.above and not value > low:
        raise UserError(
            f"{opt.flag}: must be {'positive' if low == 0 else f'above {low:g}'}, got {value}"
        )
    if not opt.above and value < low:
        raise UserError(
            f"{opt.flag}: must be {'>= 0' if low == 0 else f'at least {low:g}'}, got {value}"
        )


def check_keys(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Validate the keys and types of user-given values (from a file or the command line)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        opt = OPTIONS_BY_KEY.get(key)
        if opt is None:
            hint = did_you_mean(key, OPTIONS_BY_KEY)
            raise UserError(f"{source}: unknown key {key!r}{hint}")
        out[key] = _check_type(opt, value)
    return out
