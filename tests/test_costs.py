"""The CPU cost tables (reproduce/matrix/costs.py): how they are measured, and the estimate built
from them."""

from __future__ import annotations

import pytest

from reproduce.matrix import costs


def test_steady_seconds_leaves_out_the_warm_up_and_takes_the_median():
    # a step whose first three calls take 10 s and whose later ones take 1, 1, 5, 1, 1 s on a
    # clock that only moves when a step runs
    durations = iter([10.0, 10.0, 10.0, 1.0, 1.0, 5.0, 1.0, 1.0])
    now = [0.0]

    def step() -> None:
        now[0] += next(durations)

    assert costs.steady_seconds(step, warmup=3, steps=5, clock=lambda: now[0]) == 1.0
    with pytest.raises(StopIteration):  # exactly warmup + steps calls were made
        step()


def test_a_cell_costs_its_start_training_heldout_evaluations_and_grids():
    cfg = {"arch": "resnet101", "procedure": "wgan-gp", "dim": 8, "batch_size": 16, "iters": 400}
    bare = costs.cell_wall_seconds(cfg, costs.Schedule())
    assert bare == costs.STARTUP_SECONDS + 400 * costs.SECONDS_PER_ITER["resnet101", "wgan-gp"]
    held = costs.cell_wall_seconds(cfg, costs.Schedule(heldouts=100))
    assert held - bare == pytest.approx(100 * costs.HELDOUT_SECONDS["resnet101", "wgan-gp"])
    judged = costs.cell_wall_seconds(cfg, costs.Schedule(evals=(500, 2000)))
    per_sample = costs.SAMPLE_SECONDS["resnet101"] + costs.JUDGE_SECONDS_PER_SAMPLE
    assert judged - bare == pytest.approx(
        2500 * per_sample + 2 * costs.EVAL_OVERHEAD_SECONDS + costs.FIRST_EVAL_SECONDS
    )
    # Inception's scoring is not in the tables: its samples are generated, nothing more
    unjudged = costs.cell_wall_seconds(cfg, costs.Schedule(evals=(500, 2000), judged=False))
    assert unjudged - bare == pytest.approx(2500 * costs.SAMPLE_SECONDS["resnet101"])
    grids = costs.cell_wall_seconds(cfg, costs.Schedule(grids=4))
    assert grids - bare == pytest.approx(4 * 64 * costs.SAMPLE_SECONDS["resnet101"])
    # twice the width: four times the step, the held-out loss and the generator's samples
    wide = costs.cell_wall_seconds({**cfg, "dim": 16}, costs.Schedule(heldouts=100, grids=4))
    assert wide - costs.STARTUP_SECONDS == pytest.approx(
        4 * (held + grids - bare - costs.STARTUP_SECONDS)
    )


def test_a_cell_outside_the_tables_costs_the_default_step_unscaled():
    # cifar (Figure 3) is in no table: the default step, half of it per held-out loss and
    # its share of one image per sample, whatever the width (no reference to scale from)
    for dim in (8, 64):
        cfg = {"arch": "cifar", "procedure": "wgan-gp", "dim": dim, "batch_size": 64, "iters": 10}
        got = costs.cell_wall_seconds(cfg, costs.Schedule(heldouts=4, grids=1))
        step = costs.DEFAULT_SECONDS
        assert got == pytest.approx(
            costs.STARTUP_SECONDS + 10 * step + 4 * step / 2 + 64 * step / 64
        )


def test_every_table_has_every_cell_of_the_matrix():
    from architectures import PAIRS
    from reproduce.gan.procedures import PROCEDURES

    cells = {(a, p) for a in PAIRS for p in PROCEDURES}
    assert set(costs.SECONDS_PER_ITER) == cells == set(costs.HELDOUT_SECONDS)
    assert set(costs.SAMPLE_SECONDS) == set(PAIRS)
    assert all(v > 0 for t in (costs.SECONDS_PER_ITER, costs.HELDOUT_SECONDS,
                               costs.SAMPLE_SECONDS) for v in t.values())  # fmt: skip


def test_measuring_prints_tables_that_read_back(capsys):
    # the real measurement (spawned worker, Trainer, held-out loss, generator) of one small
    # cell, one call of each: what it prints is Python that defines the three tables
    measured = costs.measure(["mlp-generator"], ["dcgan"], workers=1, warmup=0, steps=1)
    step, heldout, sample = measured["mlp-generator", "dcgan"]
    assert step > 0 and heldout > 0 and sample > 0
    tables: dict[str, dict] = {}
    exec(capsys.readouterr().out, {}, tables)
    assert tables["SECONDS_PER_ITER"] == {("mlp-generator", "dcgan"): float(f"{step:.3g}")}
    assert tables["HELDOUT_SECONDS"] == {("mlp-generator", "dcgan"): float(f"{heldout:.3g}")}
    assert tables["SAMPLE_SECONDS"] == {"mlp-generator": float(f"{sample:.3g}")}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope"], "unknown architecture 'nope'"),
        (["baseline", "wgan-pg"], "unknown procedure 'wgan-pg'"),
        (["--steps", "0"], "--workers and --steps must be at least 1"),
    ],
)
def test_measuring_refuses_a_mistake_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        costs.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.parametrize(("iters", "every"), [(400, 0), (7, 2), (6, 2), (150, 0), (1, 3), (5, 5)])
def test_the_estimate_counts_the_held_out_losses_a_run_records(iters, every):
    """``heldout_count`` (the dry-run's) is the number of iterations at which ``heldout_due``
    (the training loop's) records one, the last iteration included (150 iterations: every
    1 and the last; 7 every 2: at 2, 4, 6 and 7)."""
    from reproduce.config.runtime import RuntimeConfig

    rt = RuntimeConfig(results=".", heldout_every=every)
    due = [d for d in range(1, iters + 1) if rt.heldout_due(d, iters)]
    assert rt.heldout_count(iters) == len(due)
    assert due[-1] == iters


def test_the_estimate_starts_cells_in_the_pools_order():
    """The makespan follows the order given (a long cell started last runs alone), and that
    order is the CPU pool's own: the longest training first, matrix order among equals."""
    from reproduce.matrix.dispatch import CellSpec, LocalPool, Packing

    assert costs.makespan([1.0, 1.0, 4.0], 2) == 5.0  # not 4.0: the order is not re-sorted
    configs = [{"arch": a, "procedure": p, "dim": 8, "batch_size": 16, "iters": 400}
               for a, p in costs.SECONDS_PER_ITER]  # fmt: skip
    configs.append({**configs[0]})  # a tie keeps matrix order
    specs = [CellSpec(c, {}, f"run{i}") for i, c in enumerate(configs)]
    pool = LocalPool([], Packing(), cpu_workers=2)
    order = [s.run_dir for s in pool.order(specs)]
    assert order == [s.run_dir for s in costs.longest_first(specs, lambda s: s.config)]
    assert order.index("run0") + 1 == order.index(f"run{len(configs) - 1}")
    first = costs.longest_first(configs, lambda c: c)
    assert (first[0]["arch"], first[0]["procedure"]) == ("resnet101", "wgan-gp")
