"""RELIABILITY.md's bad-input catalogue for one cell: each mistake fails before any work with
one line on stderr naming the flag or file, exit code 2, and nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reproduce.data.prepare import Options, prepare

from .conftest import Payload, run_cli, run_main, tree
from .lsun import make_folder, make_lmdb

SMALL = ["--dim", "8", "--batch-size", "4", "--iters", "2", "--no-progress", "--no-eval"]


def assert_rejected(tmp_path: Path, *argv: str, match: str, results: Path | None = None) -> str:
    results = results or tmp_path / "results"
    before = tree(tmp_path)
    code, _, err = run_main("train", *SMALL, "--results", str(results), *argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("reproduce train: error:"), err
    assert match in lines[0], err
    assert "Traceback" not in err
    assert tree(tmp_path) == before  # nothing written
    return lines[0]


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--arch", "basline"], "--arch: unknown value 'basline' (did you mean 'baseline'?)"),
        (
            ["--arch", "cifar"],
            "--arch: architecture cifar needs 32x32 images, and the default data (demo) holds "
            "64x64; give --data with 32x32 data (the CIFAR-10 python archive)",
        ),
        (
            ["--procedure", "wgangp"],
            "--procedure: unknown value 'wgangp' (did you mean 'wgan-gp'?)",
        ),
        (["--data", "dmeo"], "--data: 'dmeo' is neither a built-in dataset (demo, shapes)"),
        (["--hparams", "papr"], "--hparams: unknown value 'papr' (did you mean 'paper'?)"),
        (["--iter", "3"], "unrecognized arguments: --iter 3 (did you mean --iters?)"),
        (["--batch", "3"], "unrecognized arguments: --batch 3 (did you mean --batch-size?)"),
        (["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
        (["--lr", "0"], "--lr: must be positive"),
        (["--lr=-1e-4"], "--lr: must be positive"),
        (["--lr", "nan"], "--lr: must be finite"),
        (["--beta1", "1.0"], "--beta1: must be in [0, 1)"),
        (["--beta2", "-0.1"], "--beta2: must be in [0, 1)"),
        (["--n-critic", "0"], "--n-critic: must be at least 1"),
        (["--gp-lambda", "-1"], "--gp-lambda: must be >= 0"),
        (["--procedure", "wgan", "--clip", "0"], "--clip: must be positive"),
        (["--iters", "0"], "--iters: must be at least 1"),
        (["--dim", "6"], "--dim: must be a positive multiple of 4"),
        (["--batch-size", "0"], "--batch-size: must be at least 1"),
        (
            ["--procedure", "wgan-gp", "--clip", "0.01"],
            "--clip means nothing for procedure wgan-gp",
        ),
        (
            ["--procedure", "dcgan", "--gp-lambda", "10"],
            "--gp-lambda means nothing for procedure dcgan",
        ),
        (
            ["--procedure", "wgan", "--beta1", "0.5"],
            "--beta1 means nothing for optimizer rmsprop-tf",
        ),
        (["--procedure", "wgan", "--optimizer", "adam-tf"], "needs explicit --beta1 and --beta2"),
        (["--optimizer", "adam"], "PyTorch's Adam, once the default, is now adam-torch"),
        (
            ["--arch", "baseline", "--mlp-width", "fixed-512"],
            "--mlp-width means nothing for architecture baseline",
        ),
        (
            ["--procedure", "wgan-gp", "--critic-norm", "batch"],
            "batch norm in a gradient-penalty critic",
        ),
        (["--arch", "no-norm", "--critic-norm", "layer"], "no-norm has no critic normalisation"),
        (["--threads", "0"], "--threads: must be at least 1"),
        (["--mode", "fsat"], "--mode: unknown value 'fsat' (did you mean 'fast'?)"),
        (["--cuda-graphs", "--device", "cpu"], "--cuda-graphs: needs a CUDA device"),
        (["--fast", "--cuda-graphs"], "--cuda-graphs: is for exact mode"),
        (["--compile-mode", "turbo"], "--compile-mode: unknown value 'turbo'"),
        (["--name", "../escape"], "--name: not a valid directory name"),
        (["--batch-size", "4096", "--dim", "8"], "fewer than one batch"),
    ],
)
def test_flag_mistakes(tmp_path, argv, match):
    assert_rejected(tmp_path, *argv, match=match)


def test_cuda_requested_but_unavailable(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_rejected(
        tmp_path, "--device", "cuda", match="--device: CUDA requested but not available"
    )


def test_unknown_device(tmp_path):
    assert_rejected(tmp_path, "--device", "tpu", match="--device:")


def test_data_missing_raw_or_not_a_cache_and_smaller_than_a_batch(tmp_path):
    data = tmp_path / "data"
    assert_rejected(tmp_path, "--data", str(data / "nope"), match="neither a built-in dataset")
    file = tmp_path / "file.txt"
    file.write_text("x")
    assert_rejected(tmp_path, "--data", str(file), match="is neither 'demo' nor a prepared cache")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_rejected(tmp_path, "--data", str(empty), match="is neither 'demo' nor a prepared cache")
    raw = make_folder(tmp_path / "raw", [(64, 64)] * 3)
    line = assert_rejected(tmp_path, "--data", str(raw), match="is a folder of raw images")
    assert f"python -m reproduce prepare-data --source {raw} --out {raw}-64" in line
    lsun = make_lmdb(tmp_path / "bedroom_train_lmdb", n=4, corrupt=0)
    line = assert_rejected(tmp_path, "--data", str(lsun.path), match="is a raw LMDB")
    assert "prepare-data --source" in line
    few = prepare(make_folder(tmp_path / "few", [(64, 80)] * 3), tmp_path / "few-64",
                  Options(workers=1, progress=False))  # fmt: skip
    assert_rejected(tmp_path, "--data", str(few.path), match="3 usable images, fewer than one")


def test_config_file_mistakes(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("lerning_rate = 1e-4\n")
    assert_rejected(tmp_path, "--config", str(cfg), match="unknown key 'lerning_rate'")
    cfg.write_text("n_critc = 5\n")
    assert_rejected(
        tmp_path, "--config", str(cfg), match="unknown key 'n_critc' (did you mean 'n_critic'?)"
    )
    cfg.write_text('lr = "fast"\n')
    assert_rejected(tmp_path, "--config", str(cfg), match="--lr: expected float, got 'fast'")
    cfg.write_text("iters = true\n")
    assert_rejected(tmp_path, "--config", str(cfg), match="--iters: expected int, got True")
    cfg.write_text("lr = [1\n")
    assert_rejected(tmp_path, "--config", str(cfg), match="cannot parse")
    assert_rejected(tmp_path, "--config", str(tmp_path / "none.toml"), match="no such file")


def test_unwritable_results(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_rejected(tmp_path, match="--results:", results=blocker / "results")
    assert_rejected(
        tmp_path, match="--results: cannot write to /proc", results=Path("/proc/results")
    )


def test_no_room_for_a_checkpoint(tmp_path, tmpfs):
    small = tmpfs("2m")
    line = assert_rejected(
        tmp_path,
        "--arch",
        "resnet101",
        "--dim",
        "64",
        match="bytes free",
        results=small / "results",
    )
    assert "checkpoints of this run need" in line


def test_resume_without_checkpoint_and_with_changed_config(tmp_path):
    results = tmp_path / "results"
    code, _, err = run_main("train", "--results", str(results), *SMALL)
    assert code == 0, err
    (run,) = [p for p in results.iterdir() if (p / "config.json").exists()]
    # a changed config under the same --name is refused, listing the differences
    code, _, err = run_main(
        "train",
        "--results",
        str(results),
        "--name",
        run.name,
        *SMALL,
        "--lr",
        "3e-4",
        "--seed",
        "1",
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "another config" in err and "lr: 0.0001 -> 0.0003" in err and "seed: 0 -> 1" in err
    # --resume refuses a contradicting result-affecting flag
    before = tree(tmp_path)
    code, _, err = run_main("train", "--resume", str(run), "--lr", "3e-4")
    assert code == 2 and "--lr: run has 0.0001, command line says 0.0003" in err
    assert tree(tmp_path) == before
    # --resume of a directory without a valid checkpoint
    for ckpt in (run / "checkpoints").iterdir():
        (ckpt / "state.pt").write_bytes(b"corrupt")
    code, _, err = run_main("train", "--resume", str(run))
    assert code == 2 and "has no valid checkpoint" in err
    code, _, err = run_main("train", "--resume", str(tmp_path / "nothing"))
    assert code == 2 and "is not a run directory" in err


def test_real_process_prints_one_line_and_exit_2(tmp_path):
    r = run_cli("train", "--arch", "resnet", "--results", str(tmp_path / "r"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "reproduce train: error: --arch: unknown value 'resnet' (did you mean 'resnet101'?); "
        "valid: baseline, constant-filters, mlp-generator, no-norm, gated, tanh, resnet101, cifar"
    ]
    assert r.stdout == "" and not (tmp_path / "r").exists()


def test_config_file_and_run_config_roundtrip(tmp_path):
    results = tmp_path / "results"
    cfg = tmp_path / "c.toml"
    cfg.write_text('procedure = "wgan"\nseed = 4\nclip = 0.02\n')
    code, out, err = run_main("train", "--config", str(cfg), "--results", str(results), *SMALL)
    assert code == 0, err
    (run,) = [p for p in results.iterdir() if (p / "config.json").exists()]
    doc = json.loads((run / "config.json").read_text())
    assert doc["config"]["clip"] == 0.02 and doc["config"]["seed"] == 4
    assert run.name == doc["run_id"] and run.name.startswith("baseline-wgan-s4-")
    # the run's own config.json reproduces the same run id: nothing to do
    code, out, err = run_main(
        "train", "--config", str(run / "config.json"), "--results", str(results)
    )
    assert code == 0 and out.startswith("already-completed"), out + err


@pytest.mark.parametrize("where", ["data_batch_1", "test_batch", "inside"])
def test_a_crafted_cifar_directory_never_runs_code(tmp_path, where):
    """A CIFAR-10 directory whose pickles call os.system is refused in one line, exit 2,
    nothing written, and the payload never runs (train and figures load it the same way;
    the held-out split, test_batch, goes through the same loader)."""
    import pickle

    import numpy as np

    from reproduce.data.datasets import load_cifar
    from reproduce.errors import UserError

    marker = tmp_path / "PWNED"
    data = tmp_path / "cifar"
    data.mkdir()
    for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"):
        batch: object = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
        if name == where:
            batch = Payload(marker)
        elif where == "inside" and name == "data_batch_1":
            batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [Payload(marker)]}
        (data / name).write_bytes(pickle.dumps(batch, protocol=2))
    split = "val" if where == "test_batch" else "train"
    with pytest.raises(UserError, match=r"refused posix\.system"):
        load_cifar(data, split)
    if split == "train":
        line = assert_rejected(tmp_path, "--arch", "cifar", "--data", str(data), match="--data")
        assert "refused posix.system" in line and "not a readable CIFAR-10 python archive" in line
    assert not marker.exists()


def test_a_run_directory_with_linked_files_is_refused_and_never_written_through(tmp_path):
    """Issue 18.7: log.txt as a symbolic link made every log line land in the linked file."""
    results = tmp_path / "results"
    code, _, err = run_main("train", "--results", str(results), *SMALL)
    assert code == 0, err
    (run,) = [p for p in results.iterdir() if (p / "config.json").exists()]
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (run / "log.txt").unlink()
    (run / "log.txt").symlink_to(victim)
    before = tree(tmp_path)
    for argv in (["--results", str(results), *SMALL], ["--resume", str(run)]):
        code, _, err = run_main("train", *argv)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"--results: {run} holds symbolic links or special files (log.txt)" in err
    assert victim.read_text() == "precious\n" and tree(tmp_path) == before
    # below the command line (a matrix cell, a raced link): the append refuses to follow it
    from reproduce.rundir.rundir import RunDir

    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        RunDir(run).log("through the link")
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--name", "a\0b"], "--name: contains a NUL byte"),
        (["--data", "demo\0"], "--data: contains a NUL byte"),
        (["--name", "n" * 300], "--name: a path component is longer than 255 bytes"),
        (["--results", "r/" * 2100], "--results: longer than 4096 bytes"),
        (["--results", ""], "--results: must name a directory (it is empty)"),
    ],
)
def test_nul_bytes_over_long_and_empty_paths_are_one_line(tmp_path, monkeypatch, argv, match):
    """Issue 18.10: a NUL byte or an over-long --name/--results gave a traceback, and
    --results '' wrote into the current directory."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main("train", *SMALL, *argv)
    assert code == 2 and err.strip().splitlines() == [f"reproduce train: error: {match}"], err
    assert tree(tmp_path) == []


def test_resume_of_a_run_whose_config_json_was_edited_is_refused_up_front(tmp_path):
    """Issue 18.10: `--resume` after editing config.json failed later with exit 1 (the
    checkpoint's config differs) where the original command refuses with exit 2."""
    results = tmp_path / "results"
    code, _, err = run_main("train", "--results", str(results), *SMALL, "--iters", "3",
                            "--checkpoint-every-iters", "1")  # fmt: skip
    assert code == 0, err
    (run,) = [p for p in results.iterdir() if (p / "config.json").exists()]
    doc = json.loads((run / "config.json").read_text())
    doc["config"]["lr"] = 3e-4
    (run / "config.json").write_text(json.dumps(doc))
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "interrupted"}))
    before = tree(tmp_path)
    code, _, err = run_main("train", "--resume", str(run))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--resume: {run / 'config.json'} was edited after the run started" in err
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    "command,var,value",
    [
        ("matrix", "REPRODUCE_PROGRESS_EVERY", "abc"),
        ("matrix", "REPRODUCE_PROGRESS_EVERY", "-2"),
        ("matrix", "REPRODUCE_PROGRESS_EVERY", "inf"),
        ("matrix", "REPRODUCE_PROGRESS_EVERY", "1e308"),  # OverflowError in the live thread
        ("matrix", "REPRODUCE_PROGRESS_EVERY", "1e-9"),  # 28,233 lines in a 3-second cell
        ("train", "REPRODUCE_PEAK_TFLOPS", "0"),
        ("train", "REPRODUCE_PEAK_TFLOPS", "1e3x"),
    ],
)
def test_a_bad_numeric_environment_variable_is_one_line_before_any_work(
    tmp_path, monkeypatch, command, var, value
):
    """REPRODUCE_PROGRESS_EVERY=abc gave a traceback after the matrix manifest was written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(var, value)
    argv = ["--arch", "baseline", "--procedure", "wgan-gp", "--iters", "2"]
    argv = ["matrix", "--profile", "demo", *argv] if command == "matrix" else ["train", *SMALL]
    code, _, err = run_main(*argv)
    assert err.strip().splitlines() == [
        f"reproduce {command}: error: ${var}: expected "
        + (
            "0 (the live lines off) or seconds from 0.1 to 86400"
            if "EVERY" in var
            else "the device's peak TFLOP/s, a number > 0 and at most 1e6"
        )
        + f", got {value!r}"
    ], err
    assert code == 2
    assert tree(tmp_path) == []
