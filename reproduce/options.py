"""Every user-settable key, declared once: ``OPTIONS`` (type, default, help, choices,
section). The command line's options (cli/common.py), ``--config`` files and the checks of
keys, types, choices and bounds are generated from this table, so a key cannot exist in one
place and be missing in another. Unknown keys and wrong types are errors. No torch here."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from architectures import ALL_PAIRS, MLP_WIDTHS, NORMS, PADDINGS

from .errors import UserError, did_you_mean
from .procedures import HPARAM_SETS, LEGACY_OPTIMIZERS, OPTIMIZERS, PROCEDURES

MODES = ("exact", "fast", "fast-bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
JUDGES = ("auto", "demo", "inception")


@dataclass(frozen=True)
class Option:
    """One user-settable key: the flag is ``--`` + key with dashes."""

    key: str
    type: type
    default: Any  # shown in --help; None = "the procedure's default" or "off" (see help)
    help: str
    choices: tuple[str, ...] | None = None
    section: str = "run"  # run (result-affecting) | runtime

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


# fmt: off
OPTIONS: tuple[Option, ...] = (
    Option("arch", str, "baseline", "architecture pair (a row of Figure 2, or cifar: the "
           "32x32 networks of Figure 3)", tuple(ALL_PAIRS)),
    Option("procedure", str, "wgan-gp", "training procedure", tuple(PROCEDURES)),
    Option("hparams", str, "paper", "named hyperparameter set: 'paper' = App. E (WGAN-GP Adam "
           "beta1 0.5); 'official-code' = the authors' HEAD (beta1 0)", HPARAM_SETS),
    Option("optimizer", str, None, "optimiser for G and D; default: the procedure's "
           "(adam-tf for dcgan/wgan-gp, rmsprop-tf for lsgan/wgan). adam-tf is TF1's Adam as "
           "in the authors' code (eps added before the bias correction: SPEC.md B.4, E.4b); "
           "adam-torch is PyTorch's Adam and rmsprop-torch PyTorch's RMSprop, named "
           "departures", OPTIMIZERS),
    Option("lr", float, None, "learning rate; default: the procedure's (dcgan 2e-4, lsgan 1e-4, "
           "wgan 5e-5, wgan-gp 1e-4)"),
    Option("beta1", float, None, "Adam beta1; default: the procedure's (dcgan 0.5; wgan-gp 0.5 "
           "paper / 0.0 official-code)"),
    Option("beta2", float, None, "Adam beta2; default: the procedure's (dcgan 0.999, wgan-gp 0.9)"),
    Option("n_critic", int, None, "critic steps per generator iteration; default: 5 for the "
           "WGANs, 1 for dcgan/lsgan"),
    Option("gp_lambda", float, None, "gradient-penalty weight (wgan-gp only); default: 10"),
    Option("clip", float, None, "weight-clipping bound c (wgan only); default: 0.01"),
    Option("critic_norm", str, "auto", "critic normalisation: auto = layer norm under wgan-gp, "
           "batch norm otherwise, none for no-norm", ("auto", *NORMS)),
    Option("padding", str, "tf-same", "convolution padding: tf-same (exact TF emulation) or "
           "symmetric (the usual PyTorch approximation, a 1-pixel shift)", PADDINGS),
    Option("dim", int, 64, "base width DIM of every network (paper: 64); a multiple of 4"),
    Option("mlp_width", str, "scaled", "hidden width of the mlp-generator pair's MLP (SPEC.md "
           "E.19b): scaled = 8 * dim (scales with the other networks) or fixed-512 (the "
           "authors' code: 512 whatever dim is); equal at dim 64", MLP_WIDTHS),
    Option("batch_size", int, 64, "batch size of every critic and generator step"),
    Option("iters", int, 200_000, "generator iterations (the authors' ITERS)"),
    Option("seed", int, 0, "random seed (weights, noise, interpolation, data order)"),
    Option("mode", str, "exact", "numerics: exact (the reference fp32 maths; CUDA graphs and "
           "foreach optimisers change no bit) | fast (torch.compile, the penalty through "
           "torch.func.grad, TF32 matmuls; close to exact, not bit-identical) | fast-bf16 "
           "(fast plus bf16 autocast, the penalty and norms in fp32). --fast is --mode fast. "
           "The mode is part of the run id and shown in every table", MODES),
    Option("data", str, "demo", "'demo' (built-in procedural images, no download) or a cache "
           "made by prepare-data", section="runtime"),
    Option("data_placement", str, "auto", "where the training images live: device (resident "
           "on the GPU), host (memory-mapped, pinned non-blocking copies) or auto (device when "
           "they fit in 60 percent of free GPU memory)", ("auto", "device", "host"),
           section="runtime"),
    Option("results", str, "results", "results directory; each run gets a subdirectory",
           section="runtime"),
    Option("name", str, None, "run directory name; default: the run id "
           "(<arch>-<procedure>-s<seed>-<config hash>)", section="runtime"),
    Option("device", str, "auto", "cpu, cuda, cuda:N, or auto (cuda when available)",
           section="runtime"),
    Option("threads", int, None, "CPU threads for torch; default: torch's choice. CPU results "
           "are bit-exact for a fixed thread count", section="runtime"),
    Option("checkpoint_every", float, 600.0, "seconds between checkpoints (0: no time-based "
           "checkpoints)", section="runtime"),
    Option("checkpoint_every_iters", int, 0, "also checkpoint every N generator iterations "
           "(0: off)", section="runtime"),
    Option("keep_checkpoints", int, 2, "how many newest checkpoints to keep",
           section="runtime"),
    Option("log_every", int, 100, "iterations between reads of the training statistics "
           "(one host sync each); every iteration is still logged", section="runtime"),
    Option("sample_every", int, 1000, "iterations between fixed-noise 8x8 sample grids "
           "(0: only the final grid)", section="runtime"),
    Option("progress", bool, True, "show a progress bar", section="runtime"),
    Option("count_flops", bool, True, "count the FLOPs of one generator iteration when the run "
           "starts (seconds; about a minute for ResNet-101 WGAN-GP) and report achieved TFLOP/s "
           "and MFU in its status", section="runtime"),
    Option("cuda_graphs", bool, None, "capture whole critic and generator steps (forward, "
           "penalty, backward) in CUDA graphs; bit-identical to eager execution. Default: on "
           "for exact-mode runs on a CUDA device", section="runtime"),
    Option("compile_mode", str, "default", "torch.compile mode under --mode fast/fast-bf16 "
           "(reduce-overhead adds CUDA graphs of the compiled code)", COMPILE_MODES,
           section="runtime"),
    Option("eval", bool, None, "score samples during training and at the end: Inception "
           "score, FID and KID with the --judge network, and a verdict (default: on)",
           section="runtime"),
    Option("judge", str, "auto", "the network that scores samples: demo (a small classifier of "
           "the demo data's 8 modes, built offline in under a minute; adds modes covered and "
           "confident fraction), inception (torch-fidelity's TF-compatible Inception, as the "
           "paper) or auto (demo on the demo data unless --inception-weights is given, inception "
           "otherwise)", JUDGES,
           section="runtime"),
    Option("eval_every", int, 0, "iterations between periodic evaluations (0: iters // 20; "
           "with the demo judge iters // 5, and none in runs of under 50 iterations)",
           section="runtime"),
    Option("eval_samples", int, None, "generated samples per periodic evaluation; default: "
           "5,000 with Inception (1000: the protocol of Figure 3), 500 with the demo judge",
           section="runtime"),
    Option("final_eval_samples", int, None, "generated samples of the final evaluation; "
           "default: 50,000 with Inception (and 10 splits: the protocol of Table 3), 2,000 "
           "with the demo judge", section="runtime"),
    Option("reference_samples", int, 50_000, "training images for FID/KID and the real-data "
           "Inception score (all of them if fewer)", section="runtime"),
    Option("inception_weights", str, None, "Inception weights file (torch-fidelity's "
           "inception-v3-compat); default: $REPRODUCE_INCEPTION_WEIGHTS, then torch-fidelity's "
           "cache, then its download", section="runtime"),
    Option("heldout", bool, None, "critic loss on held-out images (Figure 5a), written to "
           "heldout.jsonl; default: on when the data has a held-out split (demo, or a cache "
           "prepared with --val-fraction)", section="runtime"),
    Option("heldout_every", int, 0, "iterations between held-out critic losses (0: iters // "
           "100)", section="runtime"),
    Option("restart_invalid_checkpoints", bool, False, "when a run has checkpoints but none "
           "of them can be used (corrupt, unloadable, from other code), train it again from "
           "iteration 0 instead of failing (the log names each checkpoint and why)",
           section="runtime"),
    Option("is_threshold", float, 0.5, "verdict: a completed cell trained if its final IS is at "
           "least this fraction of the data's", section="runtime"),
    Option("diversity_threshold", float, 0.5, "verdict: ... and its samples at least this "
           "fraction as diverse as the data (else: collapsed)", section="runtime"),
)
# fmt: on
OPTIONS_BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}


SEED_MAX = 2**64 - 1  # torch.manual_seed's range
# Upper bounds of the numeric options (the lower ones, with their own messages, are checked
# where each is resolved). Generous: far beyond any sensible run, small enough that nothing
# overflows a float32 tensor, a uint64 seed or the process (one critic step per n_critic, so
# n_critic bounds how long the stop flag can go unread). Every float must also be finite.
MAXIMA: dict[str, float] = {
    "lr": 10.0, "gp_lambda": 1e6, "clip": 1e6, "n_critic": 1000, "dim": 1024,
    "batch_size": 65_536, "iters": 10**9, "seed": SEED_MAX, "threads": 1024,
    "checkpoint_every": 1e9, "checkpoint_every_iters": 10**9, "keep_checkpoints": 1000,
    "log_every": 10**9, "sample_every": 10**9, "eval_every": 10**9, "heldout_every": 10**9,
    "eval_samples": 10**7, "final_eval_samples": 10**7, "reference_samples": 10**7,
    "is_threshold": 100.0, "diversity_threshold": 100.0,
}  # fmt: skip


def check_range(flag: str, value: float, maximum: float) -> None:
    """One line naming the flag for a non-finite float or a value above ``maximum``."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{flag}: must be finite, got {value}")
    if value > maximum:
        shown = f"{maximum:,}" if isinstance(maximum, int) else f"{maximum:g}"
        raise UserError(f"{flag}: must be at most {shown}, got {value:g}")


def _check_type(opt: Option, value: Any) -> Any:
    """Return ``value`` as the option's type, or raise UserError naming the key."""
    if value is None:
        return None
    if opt.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if opt.type is bool and not isinstance(value, bool):
        raise UserError(f"{opt.flag}: expected true or false, got {value!r}")
    if opt.type is not bool and isinstance(value, bool):
        raise UserError(f"{opt.flag}: expected {opt.type.__name__}, got {value!r}")
    if not isinstance(value, opt.type):
        raise UserError(f"{opt.flag}: expected {opt.type.__name__}, got {value!r}")
    if opt.choices is not None and value not in opt.choices:
        hint = did_you_mean(str(value), opt.choices)
        if opt.key == "optimizer" and value in LEGACY_OPTIMIZERS:
            hint = (
                f" (PyTorch's Adam, once the default, is now {LEGACY_OPTIMIZERS[value]}; TF1's "
                "Adam, adam-tf, is the default)"
            )
        raise UserError(
            f"{opt.flag}: unknown value {value!r}{hint}; valid: {', '.join(opt.choices)}"
        )
    if opt.key in MAXIMA and isinstance(value, int | float):
        check_range(opt.flag, value, MAXIMA[opt.key])
    return value


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
