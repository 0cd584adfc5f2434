"""How a run is executed (``RuntimeConfig``): paths, device, cadences, evaluation. Changing
these never changes the numbers (on one device and thread count) and never the run id.

Each field that a user can set carries its option in its metadata (``option``: help, choices,
bounds); ``options.OPTIONS`` generates the runtime half of the command line, of ``--config``
files and of their validation from these fields, so a runtime option is declared here once.
No torch here."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
JUDGES = ("auto", "demo", "inception")
# the built-in procedural datasets (data.DEMO_STYLES: the same eight modes, so the demo judge
# knows them all); anything else given to --data is a path
BUILTIN_DATA = ("demo", "shapes")
# default (periodic, final) evaluation sizes per judge: Inception as the paper (Table 3: 50,000
# samples, 10 splits); the demo judge scores 10,000 samples in seconds, but 2,000 (200 per
# split) already put its score within about 0.05 of the full set's on the demo data
JUDGE_SAMPLES = {"inception": (5_000, 50_000), "demo": (500, 2_000)}


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask (``taskset``, a SLURM allocation's
    or a container's cpuset), not the machine's core count, which can be far larger. Where
    there is no mask (macOS), the core count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def option(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    above: bool = False,
    maximum: float | None = None,
) -> Any:
    """A dataclass field that is also a user option (``--`` + the field name with dashes):
    ``minimum`` is inclusive unless ``above`` (then the value must exceed it)."""
    bounds = {"minimum": minimum, "above": above, "maximum": maximum}
    return dataclasses.field(
        default=default, metadata={"option": {"help": help, "choices": choices, **bounds}}
    )


# fmt: off
@dataclass(frozen=True)
class RuntimeConfig:
    """How a run is executed; changing these never changes the numbers (on one device and
    thread count) and never changes the run id."""

    data: str = option("demo", "'demo' (built-in procedural images, no download), 'shapes' "
                       "(the same eight modes, white on black, near the centre, no noise: "
                       "what a small GAN learns on a CPU) or a cache made by prepare-data")
    data_placement: str = option("auto", "where the training images live: device (resident "
                                 "on the GPU), host (memory-mapped, pinned non-blocking "
                                 "copies) or auto (device when they fit in 60 percent of free "
                                 "GPU memory)", choices=("auto", "device", "host"))
    share_gpu: int = option(1, "how many runs share this run's GPU (the matrix sets it for "
                            "cells packed K per GPU): auto placement then keeps the images "
                            "on the GPU only when they fit in 60 percent of 1/K of its "
                            "memory, since packed runs start at the same moment and each "
                            "sees all of it free", minimum=1, maximum=64)
    results: str = option("results", "results directory; each run gets a subdirectory")
    name: str | None = option(None, "run directory name; default: the run id "
                              "(<arch>-<procedure>-s<seed>-<config hash>)")
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (cuda when available)")
    threads: int | None = option(None, "CPU threads for torch; default: torch's choice. CPU "
                                 "results are bit-exact for a fixed thread count",
                                 minimum=1, maximum=1024)
    checkpoint_every: float = option(600.0, "seconds between checkpoints (0: no time-based "
                                     "checkpoints)", minimum=0, maximum=1e9)
    checkpoint_every_iters: int = option(0, "also checkpoint every N generator iterations "
                                         "(0: off)", minimum=0, maximum=10**9)
    keep_checkpoints: int = option(2, "how many newest checkpoints to keep", minimum=1,
                                   maximum=1000)
    log_every: int = option(100, "iterations between reads of the training statistics (one "
                            "host sync each); every iteration is still logged", minimum=1,
                            maximum=10**9)
    sample_every: int = option(1000, "iterations between fixed-noise 8x8 sample grids (0: only "
                               "the final grid)", minimum=0, maximum=10**9)
    progress: bool = option(True, "show a progress bar")
    tensorboard: bool = option(True, "write TensorBoard event files while training (under "
                               "RESULTS/tensorboard/<arch>/<procedure>/s<seed>-<hash>: "
                               "statistics, evaluations, throughput, sample grids, the config); "
                               "--no-tensorboard turns them off")
    count_flops: bool = option(True, "count the FLOPs of one generator iteration when the run "
                               "starts (seconds; about a minute for ResNet-101 WGAN-GP) and "
                               "report achieved TFLOP/s and MFU in its status")
    cuda_graphs: bool | None = option(None, "capture whole critic and generator steps "
                                      "(forward, penalty, backward) in CUDA graphs; "
                                      "bit-identical to eager execution. Default: on for "
                                      "exact-mode runs on a CUDA device")
    compile_mode: str = option("default", "torch.compile mode under --mode fast/fast-bf16 "
                               "(reduce-overhead adds CUDA graphs of the compiled code)",
                               choices=COMPILE_MODES)
    # evaluation (Inception score, FID and KID, or the demo judge; SPEC.md D): never changes
    # the training numbers
    eval: bool | None = option(None, "score samples during training and at the end: Inception "
                               "score, FID and KID with the --judge network, and a verdict "
                               "(default: on)")
    judge: str = option("auto", "the network that scores samples: demo (a small classifier of "
                        "the demo data's 8 modes, built offline in under a minute; adds modes "
                        "covered and confident fraction), inception (torch-fidelity's "
                        "TF-compatible Inception, as the paper) or auto (demo on the demo data "
                        "unless --inception-weights is given, inception otherwise)",
                        choices=JUDGES)
    eval_every: int = option(0, "iterations between periodic evaluations (0: iters // 20; "
                             "with the demo judge iters // 5, and none in runs of under 50 "
                             "iterations)", minimum=0, maximum=10**9)
    # at least 20 samples: 10 splits of at least 2
    eval_samples: int | None = option(None, "generated samples per periodic evaluation; "
                                      "default: 5,000 with Inception (1000: the protocol of "
                                      "Figure 3), 500 with the demo judge", minimum=20,
                                      maximum=10**7)
    final_eval_samples: int | None = option(None, "generated samples of the final evaluation; "
                                            "default: 50,000 with Inception (and 10 splits: "
                                            "the protocol of Table 3), 2,000 with the demo "
                                            "judge", minimum=20, maximum=10**7)
    reference_samples: int = option(50_000, "training images for FID/KID and the real-data "
                                    "Inception score (all of them if fewer)", minimum=20,
                                    maximum=10**7)
    inception_weights: str | None = option(None, "Inception weights file (torch-fidelity's "
                                           "inception-v3-compat); default: "
                                           "$REPRODUCE_INCEPTION_WEIGHTS, then torch-fidelity's "
                                           "cache, then its download")
    inception_sha256: str | None = None  # set after verification; checked again at job start
    heldout: bool | None = option(None, "critic loss on held-out images (Figure 5a), written "
                                  "to heldout.jsonl; default: on when the data has a held-out "
                                  "split (demo, or a cache prepared with --val-fraction)")
    heldout_every: int = option(0, "iterations between held-out critic losses (0: iters // "
                                "100)", minimum=0, maximum=10**9)
    restart_invalid_checkpoints: bool = option(False, "when a run has checkpoints but none of "
                                               "them can be used (corrupt, unloadable, from "
                                               "other code), train it again from iteration 0 "
                                               "instead of failing (the log names each "
                                               "checkpoint and why)")
    is_threshold: float = option(0.5, "verdict: a completed cell trained if its final IS is at "
                                 "least this fraction of the data's", minimum=0, above=True,
                                 maximum=100.0)
    diversity_threshold: float = option(0.5, "verdict: ... and its samples at least this "
                                        "fraction as diverse as the data (else: collapsed)",
                                        minimum=0, above=True, maximum=100.0)
    # fmt: on

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def eval_enabled(self) -> bool:
        return self.eval if self.eval is not None else True

    @property
    def judge_kind(self) -> str:
        """``demo`` (the demo judge) or ``inception``: what --judge auto means for the data
        (the demo judge on the built-in data, unless --inception-weights asks for Inception)."""
        if self.judge != "auto":
            return self.judge
        builtin = self.data in BUILTIN_DATA
        return "demo" if builtin and not self.inception_weights else "inception"

    def samples(self, kind: str) -> int:
        """Generated samples of a ``periodic`` or ``final`` evaluation: the option when given,
        else the judge's default (JUDGE_SAMPLES)."""
        given = self.final_eval_samples if kind == "final" else self.eval_samples
        if given is not None:
            return given
        periodic, final = JUDGE_SAMPLES[self.judge_kind]
        return final if kind == "final" else periodic

    def eval_interval(self, iters: int) -> int:
        """--eval-every, else 20 periodic evaluations (Inception), or 5 with the demo judge,
        whose runs are short: a run of under 50 iterations is judged at its end only."""
        if self.eval_every:
            return self.eval_every
        if self.judge_kind == "demo":
            every = iters // 5
            return every if every >= 10 else iters
        return max(1, iters // 20)

    def heldout_interval(self, iters: int) -> int:
        return self.heldout_every or max(1, iters // 100)

    def heldout_due(self, done: int, iters: int) -> bool:
        """Whether a run (with a val split) records a held-out critic loss once ``done``
        iterations are done: every interval, and at the last iteration."""
        return done % self.heldout_interval(iters) == 0 or done == iters

    def heldout_count(self, iters: int) -> int:
        """How many held-out losses ``heldout_due`` asks of a whole run (the time estimate)."""
        every = self.heldout_interval(iters)
        return iters // every + (1 if iters % every else 0)
