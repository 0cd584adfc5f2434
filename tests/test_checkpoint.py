"""Checkpoint files: verification, fallback to the previous one, pruning, orphans, seeds."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch

from reproduce.rundir import checkpoint
from reproduce.rundir.rundir import RunDir
from reproduce.training.loop import train_run
from reproduce.training.trainer import Trainer

from .conftest import Payload, quiet_runtime, small_config, states_equal


def test_newest_corrupt_checkpoint_falls_back_and_the_run_resumes_from_it(small_demo, tmp_path):
    cfg = small_config(small_demo, iters=6)
    rt = quiet_runtime(tmp_path, checkpoint_every_iters=2, keep_checkpoints=3)
    rd = RunDir(tmp_path / cfg.run_id)
    assert train_run(cfg, rt, small_demo, rd, torch.device("cpu")).state == "completed"
    ckpts = checkpoint.list_checkpoints(rd.checkpoints_dir)
    assert [c.iteration for c in ckpts] == [6, 4, 2]  # keep 3, newest first
    newest = ckpts[0].path / "state.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    newest.write_bytes(bytes(data))
    loaded = checkpoint.load_latest(rd.checkpoints_dir)
    assert loaded is not None and loaded[0].iteration == 4 and loaded[2] == [ckpts[0].path]
    (ckpts[1].path / "meta.json").unlink()  # an incomplete one (no completion marker)
    assert checkpoint.load_latest(rd.checkpoints_dir)[0].iteration == 2
    # a run whose newest checkpoints are bad resumes from the good one and ends identical
    rd.write_status("interrupted", iteration=6)
    for p in [*rd.checkpoints_dir.iterdir()]:
        if p.name.startswith("ckpt-00000006"):
            (p / "meta.json").unlink()
    ref_dir = RunDir(tmp_path / "ref")
    train_run(cfg, rt, small_demo, ref_dir, torch.device("cpu"))
    assert train_run(cfg, rt, small_demo, rd, torch.device("cpu")).state == "completed"
    log = rd.log_file.read_text()
    assert "skipped checkpoint ckpt-00000006: its size or sha256 does not match" in log
    assert "resumed from ckpt-00000002" in log
    a = checkpoint.load_latest(rd.checkpoints_dir)[1]
    b = checkpoint.load_latest(ref_dir.checkpoints_dir)[1]
    assert states_equal(a["generator"], b["generator"]) and states_equal(a["opt_d"], b["opt_d"])


def test_orphan_temp_folders_are_removed(tmp_path):
    (tmp_path / ".tmp-ckpt-00000003-abcd").mkdir()
    (tmp_path / ".tmp-ckpt-00000003-abcd" / "state.pt").write_bytes(b"half")
    (tmp_path / "ckpt-00000001").mkdir()
    removed = checkpoint.remove_orphans(tmp_path)
    assert [p.name for p in removed] == [".tmp-ckpt-00000003-abcd"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-00000001"]


def test_checkpoints_load_with_weights_only(small_demo, tmp_path):
    cfg = small_config(small_demo, iters=1)
    rd = RunDir(tmp_path / cfg.run_id)
    train_run(cfg, quiet_runtime(tmp_path), small_demo, rd, torch.device("cpu"))
    (ckpt,) = checkpoint.list_checkpoints(rd.checkpoints_dir)
    state = torch.load(ckpt.path / "state.pt", weights_only=True)
    assert set(state) >= {
        "generator",
        "critic",
        "opt_g",
        "opt_d",
        "data",
        "rng",
        "fixed_noise",
        "iteration",
        "config_hash",
        "env",
    }


def test_different_seeds_give_different_weights(small_demo):
    a = Trainer(small_config(small_demo, seed=1), small_demo, torch.device("cpu"))
    b = Trainer(small_config(small_demo, seed=2), small_demo, torch.device("cpu"))
    assert not states_equal(a.G.state_dict(), b.G.state_dict())
    c = Trainer(small_config(small_demo, seed=1), small_demo, torch.device("cpu"))
    assert states_equal(a.G.state_dict(), c.G.state_dict())
    assert torch.equal(a.fixed_noise, c.fixed_noise) and not torch.equal(
        a.fixed_noise, b.fixed_noise
    )


def tamper(ckpt: Path, state: object) -> None:
    """Replace a checkpoint's state and update meta.json to match: it passes its checksum."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    (ckpt / "state.pt").write_bytes(data)
    meta = json.loads((ckpt / "meta.json").read_text())
    meta.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (ckpt / "meta.json").write_text(json.dumps(meta))


def three_checkpoints(small_demo, tmp_path, name="run"):
    cfg = small_config(small_demo, iters=6)
    rt = quiet_runtime(tmp_path, checkpoint_every_iters=2, keep_checkpoints=3)
    rd = RunDir(tmp_path / name)
    assert train_run(cfg, rt, small_demo, rd, torch.device("cpu")).state == "completed"
    rd.write_status("interrupted", iteration=6)  # as if killed after its last checkpoint
    ckpts = {c.iteration: c.path for c in checkpoint.list_checkpoints(rd.checkpoints_dir)}
    return cfg, rt, rd, ckpts


def test_checkpoints_that_pass_their_checksum_but_do_not_load_are_skipped(small_demo, tmp_path):
    """A refused pickle (code in it) and a state with wrong keys: each skipped with its reason
    in the log and the status; the run resumes from the older good one and ends identical to
    an untouched run; the payload never runs."""
    cfg, rt, rd, ckpts = three_checkpoints(small_demo, tmp_path)
    marker = tmp_path / "PWNED"
    good = torch.load(ckpts[4] / "state.pt", weights_only=True)
    tamper(ckpts[6], {"format": 1, "x": Payload(marker)})
    tamper(ckpts[4], {k: v for k, v in good.items() if k != "generator"})
    out = train_run(cfg, rt, small_demo, rd, torch.device("cpu"))
    assert out.state == "completed", out.message
    assert not marker.exists()
    log = rd.log_file.read_text()
    assert "skipped checkpoint ckpt-00000006: does not load (UnpicklingError" in log
    assert "weights_only=False" not in log  # torch's advice to load code is not passed on
    assert "skipped checkpoint ckpt-00000004: is not a valid training state of this run " \
        "(generator does not hold this run's tensors)" in log  # fmt: skip
    assert "resumed from ckpt-00000002" in log
    skipped = rd.read_status()["skipped_checkpoints"]
    assert [s["checkpoint"] for s in skipped] == ["ckpt-00000006", "ckpt-00000004"]
    ref = RunDir(tmp_path / "ref")
    train_run(cfg, rt, small_demo, ref, torch.device("cpu"))
    a = checkpoint.load_latest(rd.checkpoints_dir)[1]
    b = checkpoint.load_latest(ref.checkpoints_dir)[1]
    assert states_equal(a["generator"], b["generator"]) and states_equal(a["opt_g"], b["opt_g"])


def test_a_run_whose_checkpoints_are_all_unusable_never_restarts_silently(small_demo, tmp_path):
    cfg, rt, rd, ckpts = three_checkpoints(small_demo, tmp_path)
    for path in ckpts.values():
        state = torch.load(path / "state.pt", weights_only=True)
        state["generator"] = {k: v[:1] for k, v in state["generator"].items()}  # wrong shapes
        tamper(path, state)
    stats = rd.stats_file.read_bytes()
    out = train_run(cfg, rt, small_demo, rd, torch.device("cpu"))
    assert out.state == "failed" and "none of its 3 checkpoints can be used" in out.message
    assert "--restart-invalid-checkpoints" in out.message
    status = rd.read_status()
    assert status["state"] == "failed" and status["reason"] == "no-valid-checkpoint"
    assert len(status["skipped_checkpoints"]) == 3
    assert rd.stats_file.read_bytes() == stats  # nothing trained, nothing cut
    log = rd.log_file.read_text()
    assert log.count("is not a valid training state of this run (generator.") == 3
    # asked for explicitly: trained again from iteration 0, and the log says so
    again = train_run(cfg, rt.__class__(**{**rt.to_dict(), "restart_invalid_checkpoints": True}),
                      small_demo, rd, torch.device("cpu"))  # fmt: skip
    assert again.state == "completed"
    assert "again from iteration 0 over 3 unusable checkpoints" in rd.log_file.read_text()


def _set(path: str, value):
    """Set a field of a state (``a.b`` for nested dicts)."""

    def edit(state: dict) -> None:
        *parents, key = path.split(".")
        target = state
        for p in parents:
            target = target[p]
        target[key] = value(target[key]) if callable(value) else value

    return edit


TAMPERINGS = [
    ("iteration=999", _set("iteration", 999), "iteration is 999, not an integer in [0, 6]"),
    ("iteration=-5", _set("iteration", -5), "iteration is -5"),
    ("iteration of another", _set("iteration", 4), "but the checkpoint is of 6"),
    ("offset=1e12", _set("data.offset", 10**12), "data position is"),
    ("epoch=-1", _set("data.epoch", -1), "data position is"),
    ("rng shape", _set("rng.torch_cpu", lambda t: t[:10]), "rng.torch_cpu"),
    ("numpy rng", _set("rng.numpy.pos", 10**6), "rng.numpy.pos"),
    ("weights dtype", _set("generator", lambda g: {k: v.double() for k, v in g.items()}),
     "torch.float64"),
    ("NaN weight", _set("critic", lambda d: {k: v * float("nan") if v.is_floating_point()
                                             else v for k, v in d.items()}), "not finite"),
    ("optimiser state", _set("opt_d.state", lambda s: {k: {n: t[..., :1] if t.dim() else t
                                                          for n, t in v.items()}
                                                      for k, v in s.items()}),
     "has shape"),
    ("fixed noise", _set("fixed_noise", lambda t: t[:2]), "fixed_noise"),
    ("train seconds", _set("train_seconds", float("nan")), "train_seconds"),
]  # fmt: skip


@pytest.mark.parametrize("field,edit,why", TAMPERINGS, ids=[t[0] for t in TAMPERINGS])
def test_checkpoint_fields_are_validated_after_the_checksum(small_demo, tmp_path, field, edit,
                                                            why):  # fmt: skip
    """H3 (issue 46): a state.pt with its checksum recomputed is trusted no further. Each
    field must be what this run writes at that checkpoint: out of range, of the wrong
    iteration, shape or dtype, the checkpoint is skipped with one log line naming the field,
    and the run resumes from the older one to the same state as an untouched run (it used
    to complete 'at 999/20' untrained, cut stats.jsonl to one row, or crash on every rerun)."""
    cfg, rt, rd, ckpts = three_checkpoints(small_demo, tmp_path)
    state = torch.load(ckpts[6] / "state.pt", weights_only=True)
    edit(state)
    tamper(ckpts[6], state)
    out = train_run(cfg, rt, small_demo, rd, torch.device("cpu"))
    assert out.state == "completed" and out.iteration == 6, out.message
    log = rd.log_file.read_text()
    (line,) = [x for x in log.splitlines() if "skipped checkpoint ckpt-00000006" in x]
    assert "is not a valid training state of this run (" in line and why in line, line
    assert "resumed from ckpt-00000004" in log
    rows = [json.loads(x) for x in rd.stats_file.read_text().splitlines()]
    assert [r["iter"] for r in rows] == list(range(6))
    ref = RunDir(tmp_path / "ref")
    train_run(cfg, rt, small_demo, ref, torch.device("cpu"))
    a = checkpoint.load_latest(rd.checkpoints_dir)[1]
    b = checkpoint.load_latest(ref.checkpoints_dir)[1]
    assert states_equal(a["generator"], b["generator"]) and states_equal(a["critic"], b["critic"])


def test_the_expected_data_position_is_the_sampler_s(small_demo):
    """The position a state must hold is recomputed from its iteration: it equals the
    sampler's own after that many iterations of n_critic batches (epoch boundaries too)."""
    from reproduce.data.datasets import EpochSampler
    from reproduce.training.validate import expected_position

    for n, batch, n_critic in ((128, 4, 5), (10, 3, 1), (12, 4, 2), (9, 9, 5)):
        sampler = EpochSampler(n, batch, seed=0)
        for it in range(40):
            assert expected_position(it, n_critic, n, batch) == sampler.position, (n, batch, it)
            for _ in range(n_critic):
                sampler.next_slice()
