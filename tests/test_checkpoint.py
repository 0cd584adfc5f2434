"""Checkpoint files: verification, fallback to the previous one, pruning, orphans, seeds."""

from __future__ import annotations

import torch

from reproduce import checkpoint
from reproduce.results import RunDir
from reproduce.train import Trainer, train_run

from .conftest import quiet_runtime, small_config, states_equal


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
    assert "skipped invalid checkpoint" in log and "resumed from ckpt-00000002" in log
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
