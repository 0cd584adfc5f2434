"""The CPU cost tables (reproduce/matrix/costs.json, read by reproduce/matrix/costs.py): how
they are measured, and the estimate built from them."""

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


W8 = costs.load().tables[0]  # the width-8, batch-16 table of costs.json


def test_a_cell_costs_its_start_training_heldout_evaluations_and_grids():
    cfg = {"arch": "resnet101", "procedure": "wgan-gp", "dim": 8, "batch_size": 16, "iters": 400}
    start = costs.overhead("startup_s")
    step, held = W8.steps["resnet101", "wgan-gp"], W8.heldouts["resnet101", "wgan-gp"]
    sample = W8.samples["resnet101"]
    assert (W8.dim, W8.batch_size) == (8, 16) and costs.cost(cfg).measured
    bare = costs.cell_wall_seconds(cfg, costs.Schedule())
    assert bare == start + 400 * step
    held_s = costs.cell_wall_seconds(cfg, costs.Schedule(heldouts=100))
    assert held_s - bare == pytest.approx(100 * held)
    judged = costs.cell_wall_seconds(cfg, costs.Schedule(evals=(500, 2000)))
    per_sample = sample + costs.overhead("judge_per_sample_s")
    assert judged - bare == pytest.approx(
        2500 * per_sample + 2 * costs.overhead("eval_overhead_s") + costs.overhead("first_eval_s")
    )
    # Inception's scoring is not in the tables: its samples are generated, nothing more
    unjudged = costs.cell_wall_seconds(cfg, costs.Schedule(evals=(500, 2000), judged=False))
    assert unjudged - bare == pytest.approx(2500 * sample)
    grids = costs.cell_wall_seconds(cfg, costs.Schedule(grids=4))
    assert grids - bare == pytest.approx(4 * 64 * sample)


def test_a_cell_is_costed_from_the_table_nearest_its_width_and_batch():
    cfg = {"arch": "baseline", "procedure": "dcgan", "batch_size": 16}
    tables = {(t.dim, t.batch_size): t for t in costs.load().tables}
    assert {(8, 16), (16, 16)} <= set(tables)
    for dim in (8, 16):  # measured: the table's own number, unscaled
        c = costs.cost({**cfg, "dim": dim})
        assert c.measured and c.step == tables[dim, 16].steps["baseline", "dcgan"]
    # width 32, batch 64: from the width-16 table, x (32/16)^2 x (64/16); flagged as scaled
    c = costs.cost({**cfg, "dim": 32, "batch_size": 64})
    assert not c.measured and c.table is tables[16, 16]
    assert c.step == pytest.approx(16 * tables[16, 16].steps["baseline", "dcgan"])
    assert c.sample == pytest.approx(4 * tables[16, 16].samples["baseline"])


def test_a_cell_in_no_table_is_costed_from_its_procedures_median_and_flagged():
    # a new architecture (or the CIFAR pair): no test fails until it is measured; its cost is
    # the median of its procedure's cells in the nearest table, and the estimate says so
    import statistics

    for arch in ("cifar", "an-architecture-added-today"):
        c = costs.cost({"arch": arch, "procedure": "wgan-gp", "dim": 8, "batch_size": 16})
        gp = [v for (_, p), v in W8.steps.items() if p == "wgan-gp"]
        assert not c.measured and c.step == statistics.median(gp)
        assert c.sample == statistics.median(W8.samples.values())


def test_the_costs_file_says_where_and_when_each_table_was_measured():
    from architectures import PAIRS
    from reproduce.gan.procedures import PROCEDURES

    for t in costs.load().tables:
        assert {"machine", "measured", "torch", "workers", "steps"} <= set(t.about), t.about
        assert set(t.steps) <= {(a, p) for a in PAIRS for p in PROCEDURES}
        assert all(v > 0 for d in (t.steps, t.heldouts, t.samples) for v in d.values())
    assert all(v > 0 for v in costs.load().overheads.values())


def test_measuring_writes_a_table_the_estimate_reads(tmp_path, capsys):
    # the real measurement (spawned worker, Trainer, held-out loss, generator) of one small
    # cell, one call of each, written into a copy of the costs file at a new width
    table = costs.measure(["mlp-generator"], ["dcgan"], dim=4, workers=1, warmup=0, steps=1)
    cell = table["cells"]["mlp-generator/dcgan"]
    assert cell["step_s"] > 0 and cell["heldout_s"] > 0 and table["sample_s"]["mlp-generator"] > 0
    assert (table["dim"], table["batch_size"]) == (4, 16) and table["torch"]
    path = tmp_path / "costs.json"
    path.write_text(costs.COSTS_FILE.read_text())
    costs.write_table(table, path)
    read = costs.load(path)
    assert (read.tables[0].dim, read.tables[0].batch_size) == (4, 16)
    got = costs.cost({"arch": "mlp-generator", "procedure": "dcgan", "dim": 4}, read)
    assert got.measured and got.step == cell["step_s"]
    # the other tables are kept as they were
    assert read.tables[1:] == costs.load().tables


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope"], "unknown architecture 'nope'"),
        (["baseline", "wgan-pg"], "unknown procedure 'wgan-pg'"),
        (["--steps", "0"], "--workers and --steps must be at least 1"),
        (["--dim", "0"], "--dim and --batch-size must be at least 1"),
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
               for a, p in W8.steps]  # fmt: skip
    configs.append({**configs[0]})  # a tie keeps matrix order
    specs = [CellSpec(c, {}, f"run{i}") for i, c in enumerate(configs)]
    pool = LocalPool([], Packing(), cpu_workers=2)
    order = [s.run_dir for s in pool.order(specs)]
    assert order == [s.run_dir for s in costs.longest_first(specs, lambda s: s.config)]
    assert order.index("run0") + 1 == order.index(f"run{len(configs) - 1}")
    first = costs.longest_first(configs, lambda c: c)
    assert (first[0]["arch"], first[0]["procedure"]) == ("resnet101", "wgan-gp")
