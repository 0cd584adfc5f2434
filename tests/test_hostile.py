"""Hostile files, round two (issue 46): no code runs from any file torch-fidelity loads, no
checkpoint field is trusted, nothing is written or deleted through a link. Each payload test
asserts that its marker file never appears."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from reproduce.evaluation import metrics

from .conftest import Payload, run_cli, run_main, tree
from .inception import make_random_inception_weights

TRAIN = ("train", "--dim", "8", "--batch-size", "4", "--iters", "2", "--final-eval-samples",
         "100", "--no-progress")  # fmt: skip


def plant(path: Path, marker: Path) -> Path:
    """A torch file whose unpickling (weights_only=False) creates ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"mu": Payload(marker)}, path)
    return path


def test_a_planted_feature_cache_never_runs_code(tmp_path):
    """H1: torch-fidelity unpickles every cached feature file with weights_only=False, and a
    results directory is shared on clusters. Every entry of R/.cache/fidelity/ replaced by a
    payload: the next run completes, the payload never runs, the run's log names each entry
    it did not use, and the entries are replaced by ones that load as tensors only."""
    results, marker = tmp_path / "r", tmp_path / "PWNED"
    code, out, err = run_main(*TRAIN, "--seed", "7", "--results", str(results))
    assert code == 0, out + err
    cache = results / ".cache" / "fidelity"
    entries = sorted(cache.glob("*.pt"))
    assert len(entries) >= 2, tree(results)  # features, logits, the FID statistics
    for entry in entries:
        plant(entry, marker)
    code, out, err = run_main(*TRAIN, "--seed", "8", "--results", str(results))
    assert not marker.exists()
    assert code == 0, out + err
    (run,) = [p for p in results.iterdir() if "-s8-" in p.name]
    log = (run / "log.txt").read_text()
    for entry in entries:
        assert f"cached features {entry.name} not used: " in log
        assert "does not load as tensors only" in log
        torch.load(entry, weights_only=True)  # rewritten in our format: tensors only
    assert not marker.exists()
    # and the rewritten cache is used as it is by the next run (nothing named in its log)
    code, out, err = run_main(*TRAIN, "--seed", "9", "--results", str(results))
    (run9,) = [p for p in results.iterdir() if "-s9-" in p.name]
    assert code == 0 and "cached features" not in (run9 / "log.txt").read_text(), out + err


def test_inception_weights_that_would_run_code_are_refused(tmp_path, monkeypatch):
    """H2: torch-fidelity unpickles the Inception weights with weights_only=False. A payload
    given as --inception-weights, staged with a matching .sha256 beside it, or fetched from a
    URL is refused in one line (exit 2, nothing written) and never runs; the file handed to
    torch-fidelity is always this process's own copy of a tensors-only load."""
    marker = tmp_path / "PWNED"
    evil = plant(tmp_path / "evil.pth", marker)
    results = tmp_path / "r"
    code, _, err = run_main("train", "--eval", "--judge", "inception", "--inception-weights",
                            str(evil), "--results", str(results))  # fmt: skip
    assert not marker.exists()
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "is not a valid Inception weights file" in err and "tensors only" in err
    assert not results.exists()
    # staged, its checksum beside it (what fetch-weights writes): still refused
    staged = tmp_path / "staged" / metrics.WEIGHTS_FILENAME
    plant(staged, marker)
    digest = hashlib.sha256(staged.read_bytes()).hexdigest()
    (staged.parent / (staged.name + ".sha256")).write_text(f"{digest}  {staged.name}\n")
    code, _, err = run_main("train", "--eval", "--judge", "inception", "--inception-weights",
                            str(staged), "--results", str(results))  # fmt: skip
    assert not marker.exists()
    assert code == 2 and "tensors only" in err and len(err.strip().splitlines()) == 1, err
    assert not results.exists()
    # fetched (the real process: REPRODUCE_INCEPTION_URL as the probe gave it)
    cache = tmp_path / "cache"
    r = run_cli("fetch-weights", "--cache", str(cache),
                env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]),
                     "REPRODUCE_INCEPTION_URL": f"file://{evil}"})  # fmt: skip
    assert not marker.exists()
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not cache.exists()


def test_weights_swapped_after_verification_are_never_unpickled(tmp_path):
    """The copy torch-fidelity gets is made from bytes checked against the verified sha256:
    a file replaced by a payload after verification is refused, not loaded."""
    good = make_random_inception_weights(tmp_path / "good.pth")
    weights = metrics.verify_weights(good)
    marker = tmp_path / "PWNED"
    plant(good, marker)  # same path, new content
    from reproduce.evaluation.fidelity_files import UnsafeFile, safe_weights

    try:
        safe_weights(weights.path, weights.sha256)
    except UnsafeFile as e:
        assert "changed since it was verified" in str(e)
    else:
        raise AssertionError("a swapped weights file was accepted")
    assert not marker.exists()
    copy = Path(safe_weights(make_random_inception_weights(tmp_path / "again.pth")))
    assert copy.parent.stat().st_mode & 0o077 == 0  # private to this user
    state = torch.load(copy, weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    json.dumps(sorted(state)[:3])  # plain string keys


def _board_path(tmp_path: Path, seed: str) -> Path:
    """Where a run of TRAIN with ``seed`` writes its events, relative to the results: found
    by running it once in a throwaway results directory."""
    scratch = tmp_path / "scratch"
    code, out, err = run_main(*TRAIN, "--no-eval", "--seed", seed, "--results", str(scratch))
    assert code == 0, out + err
    (events,) = (scratch / "tensorboard").rglob("events.out.tfevents.*")
    return events.parent.relative_to(scratch)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_planted_tensorboard_link_destroys_nothing(tmp_path):
    """H4: a link planted where a run's events go (its own folder, or R/tensorboard itself)
    made the run delete the files the link named and write its own there. Now nothing is
    written, deleted or rewritten through a link: the run trains without events and says
    so, in its log and on the terminal; the linked folder is exactly as it was."""
    rel = _board_path(tmp_path, "3")
    for n, where in enumerate((rel, Path("tensorboard"))):
        results, victim = tmp_path / f"r{n}", tmp_path / f"victim{n}"
        inside = victim / rel.relative_to(where)  # where the run's events would land
        inside.mkdir(parents=True)
        (inside / "events.out.tfevents.1.victim").write_bytes(b"someone else's events" * 999)
        (inside / "notes.txt").write_text("keep me")
        before = _snapshot(victim)
        (results / where).parent.mkdir(parents=True, exist_ok=True)
        (results / where).symlink_to(victim)
        code, out, err = run_main(*TRAIN, "--no-eval", "--seed", "3", "--results", str(results))
        assert _snapshot(victim) == before, where  # nothing deleted, rewritten or added
        assert code == 0, out + err
        (run,) = [p for p in results.iterdir() if p.name.startswith("baseline-")]
        log = (run / "log.txt").read_text()
        assert "is a symbolic link; nothing is written through links" in log
        assert "no TensorBoard events" in err


def test_a_run_folder_that_is_a_link_is_never_written(tmp_path):
    """M13: a run directory that is itself a link to a folder outside the results directory
    was followed (the run trained and wrote all its files there). Now `train` refuses it in
    one line (exit 2) and a matrix cell's claim refuses it before its lease is written."""
    from reproduce.rundir.lease import Refusal, claim
    from reproduce.rundir.rundir import RunDir

    results, outside = tmp_path / "r", tmp_path / "outside"
    outside.mkdir()
    results.mkdir()
    (results / "mine").symlink_to(outside)
    code, _, err = run_main(*TRAIN, "--name", "mine", "--results", str(results))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "mine itself" in err and list(outside.iterdir()) == []
    refusal = claim(RunDir(results / "mine"), {"config": {}})
    assert isinstance(refusal, Refusal) and refusal.state == "failed", refusal
    assert "is a symbolic link" in refusal.message and list(outside.iterdir()) == []


def test_a_linked_feature_cache_folder_is_not_written(tmp_path):
    """R/.cache a link to a folder elsewhere: the reference features are not cached there
    (nor read from it); the run evaluates without a cache and says so in its log."""
    results, victim = tmp_path / "r", tmp_path / "victim"
    (victim / "fidelity").mkdir(parents=True)
    (victim / "fidelity" / "notes.txt").write_text("keep me")
    results.mkdir()
    (results / ".cache").symlink_to(victim)
    before = _snapshot(victim)
    code, out, err = run_main(*TRAIN, "--seed", "5", "--results", str(results))
    assert _snapshot(victim) == before
    assert code == 0, out + err
    (run,) = [p for p in results.iterdir() if p.name.startswith("baseline-")]
    log = (run / "log.txt").read_text()
    assert "warning: reference features not cached" in log and "symbolic link" in log
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["kind"] == "final"


RUN_FILES = ("status.json", "config.json", "stats.jsonl", "metrics.jsonl", "heldout.jsonl",
             "lease.0", "checkpoints/ckpt-00000004/meta.json",
             "checkpoints/ckpt-00000004/state.pt")  # fmt: skip


def _corrupt(path: Path, kind: str) -> None:
    path.unlink(missing_ok=True)
    if kind == "nested":
        path.write_text("[" * 100_000 + "\n")
    elif kind == "wrong type":
        path.write_text('[1]\n{"iter": "abc"}\n' if path.suffix == ".jsonl" else "[1]\n")
    elif kind == "1 GB":
        with path.open("wb") as f:
            f.truncate(1 << 30)  # sparse: costs nothing on disk, a gigabyte to read
    elif kind == "FIFO":
        os.mkfifo(path)
    elif kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")


def _bounded(seconds: int, fn, *args):
    """Run ``fn``; a hang (a FIFO read) fails the test instead of stopping the suite."""
    import signal

    def hung(*_):
        raise TimeoutError(f"hung for {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        return fn(*args)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.slow
def test_every_run_file_made_hostile_is_one_line_or_a_skip(tmp_path):
    """M1-M4 and the fuzz of run files: each run file of an interrupted run (its status,
    config, statistics, evaluations, held-out losses, lease, a checkpoint's meta.json and
    state.pt) made 100,000-deep JSON, the wrong type, 1 GB, a FIFO or a link to /dev/zero.
    `status`, `report`, `train --resume` and (for the files it reads) `matrix` each either
    work (skipping what they cannot read) or refuse in one line: never a traceback, never a
    hang, in bounded memory (the largest RSS is printed)."""
    import resource
    import shutil

    from .conftest import DEMO_FAST

    base = tmp_path / "base"
    matrix = ["matrix", *DEMO_FAST, "--arch", "baseline", "--procedure", "wgan-gp", "--iters",
              "6", "--checkpoint-every-iters", "2", "--keep-checkpoints", "3", "--no-eval",
              "--executor", "debug"]  # fmt: skip
    code, out, err = run_main(*matrix, "--results", str(base))
    assert code == 0, out + err
    (run0,) = [p for p in base.iterdir() if p.name.startswith("baseline-")]
    status = json.loads((run0 / "status.json").read_text())
    (run0 / "status.json").write_text(json.dumps({**status, "state": "interrupted"}))
    (run0 / "heldout.jsonl").touch()
    (run0 / "lease.0").write_text("{}")
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes = {}
    kinds = ("nested", "wrong type", "1 GB", "FIFO", "link to /dev/zero")
    for n, (name, kind) in enumerate((f, k) for f in RUN_FILES for k in kinds):
        results = tmp_path / f"r{n}"
        shutil.copytree(base, results, symlinks=True)
        run = results / run0.name
        _corrupt(run / name, kind)
        seen = []
        commands = [["status", "--results", str(results)],
                    ["report", "--results", str(results), "--out", str(tmp_path / f"o{n}")],
                    ["train", "--resume", str(run)]]  # fmt: skip
        if name in ("status.json", "config.json", "stats.jsonl", "metrics.jsonl"):
            commands.append([*matrix, "--results", str(results)])  # M2: it read them unguarded
        for argv in commands:
            code, out, err = _bounded(60, run_main, *argv)
            where = f"{argv[0]} with {name} {kind}"
            assert "Traceback" not in err + out, where + "\n" + err
            # 0: done (what could not be read skipped); 2: refused; 1: the run failed, with
            # its reason; 75: busy (an unreadable lease file younger than a heartbeat)
            assert code in (0, 1, 2, 75), f"{where}: exit {code}\n{err}"
            if code == 2:
                assert len(err.strip().splitlines()) == 1, f"{where}:\n{err}"
            if argv[0] == "train" and code in (1, 75):  # its outcome line, "busy: RUN at ..."
                assert len(out.strip().splitlines()) == 1 and ": " in out, f"{where}:\n{out}"
            seen.append(code)
        outcomes[(name, kind)] = seen
    grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024
    print(f"largest RSS grew by {grew:.0f} MB over {len(outcomes)} hostile run files")
    assert grew < 512, grew  # no reader took a gigabyte in


def _interrupted_run(tmp_path: Path) -> Path:
    """A run of TRAIN with 6 iterations and three checkpoints (2, 4, 6), marked interrupted
    (as if killed after its last checkpoint)."""
    results = tmp_path / "r"
    code, out, err = run_main(
        *TRAIN,
        "--iters",
        "6",
        "--checkpoint-every-iters",
        "2",
        "--keep-checkpoints",
        "3",
        "--no-eval",
        "--results",
        str(results),
    )
    assert code == 0, out + err
    (run,) = [p for p in results.iterdir() if p.name.startswith("baseline-")]
    status = json.loads((run / "status.json").read_text())
    (run / "status.json").write_text(json.dumps({**status, "state": "interrupted"}))
    return run


def test_a_config_with_runtime_of_the_wrong_type_is_one_line(tmp_path):
    """M11: config.json with "runtime": [1], then --resume: an AttributeError traceback."""
    run = _interrupted_run(tmp_path)
    doc = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**doc, "runtime": [1]}))
    code, _, err = run_main("train", "--resume", str(run))
    assert code == 2 and err.strip().splitlines() == [
        f"reproduce train: error: --resume: {run / 'config.json'} is unreadable "
        "(no runtime settings)"
    ], err


def test_a_newest_checkpoint_whose_meta_is_not_an_object_is_skipped(tmp_path):
    """M3: a non-object meta.json in the newest checkpoint was an AttributeError on every
    rerun, though the older checkpoints were good: it is skipped like a corrupt one."""
    run = _interrupted_run(tmp_path)
    (run / "checkpoints" / "ckpt-00000006" / "meta.json").write_text("[1]")
    code, out, err = run_main("train", "--resume", str(run))
    assert code == 0, out + err
    log = (run / "log.txt").read_text()
    assert "skipped checkpoint ckpt-00000006: its size or sha256 does not match" in log
    assert "resumed from ckpt-00000004" in log


class _HugeArray:
    """Pickles as numpy's array reconstruction called with the shape (1e8, 3072), which
    numpy allocates at once, then with a state of that shape and no data."""

    def __reduce__(self):
        import numpy as np

        multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
        return (multiarray._reconstruct, (np.ndarray, (10**8, 3072), b"B"),
                (1, (10**8, 3072), np.dtype("uint8"), False, b""))  # fmt: skip


def test_a_cifar_batch_cannot_ask_for_unbounded_memory(tmp_path):
    """M5: allowed globals can still allocate without bound: a 220-byte data_batch that
    reconstructs an array of shape (1e8, 3072) gave "Unable to allocate 286 GiB" (exit 1).
    An array is made only once its shape, dtype and data agree, within a bound: one line,
    exit 2, before anything is allocated."""
    import pickle
    import resource

    import numpy as np

    from reproduce.data.datasets import load_cifar
    from reproduce.errors import UserError

    data = tmp_path / "cifar"
    data.mkdir()
    for i in range(1, 6):
        batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
        (data / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    (data / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    ok = load_cifar(data, "val")  # the real format still loads
    assert ok.images.shape == (2, 3, 32, 32)
    evil = pickle.dumps({b"data": _HugeArray(), b"labels": [0]}, protocol=3)
    assert len(evil) < 300
    (data / "data_batch_3").write_bytes(evil)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        load_cifar(data, "train")
    except UserError as e:
        assert "not a readable CIFAR-10 python archive" in str(e)
        assert "an array of 307,200,000,000 bytes from 0 of data" in str(e)
    else:
        raise AssertionError("the crafted batch loaded")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024


def test_a_bad_judge_cache_is_one_line_or_a_rebuild(tmp_path, monkeypatch, judge_cache):
    """M7: a bad judge cache blocked runs with tracebacks. Where the cache cannot be (a file,
    below a file, /proc, its lock a folder): one line naming the variable, exit 2, before
    any work. A record of the wrong shape or with a text accuracy, or the network linked to
    /dev/zero: not used (the judge is rebuilt, as for any stale cache)."""
    import shutil

    from reproduce.evaluation import judge

    locked = tmp_path / "locked"
    (locked / ".lock").mkdir(parents=True)
    for where in ("/etc/passwd", "/etc/passwd/x", "/proc/judge", str(locked)):
        monkeypatch.setenv(judge.ENV_DIR, where)
        results = tmp_path / "r"
        code, _, err = run_main(*TRAIN, "--results", str(results))
        assert code == 2 and len(err.strip().splitlines()) == 1, (where, err)
        assert f"${judge.ENV_DIR}: cannot keep the demo judge in {where}" in err
        assert not results.exists()
    monkeypatch.setenv(judge.ENV_DIR, str(judge_cache))
    judge.resolve_judge()  # built once for the session if no test has needed it yet
    fps = judge.demo_fingerprints()
    _, record = judge._paths(judge_cache)
    assert judge._cached(judge_cache, fps)[1] == "cached"
    for n, edit in enumerate(("[1]", "val_accuracy", "link")):
        copy = tmp_path / f"copy{n}"
        shutil.copytree(judge_cache, copy)
        cpt, crec = judge._paths(copy)
        if edit == "[1]":
            crec.write_text("[1]")
        elif edit == "val_accuracy":
            crec.write_text(json.dumps({**json.loads(record.read_text()), "val_accuracy": "x"}))
        else:
            cpt.unlink()
            cpt.symlink_to("/dev/zero")
        found, why = judge._cached(copy, fps)
        assert found is None and ("not a judge's record" in why or "unreadable" in why), why


def test_a_deeply_nested_config_file_is_one_line(tmp_path):
    """M1: --config FILE of '[' x 100,000 was a RecursionError traceback."""
    cfg = tmp_path / "deep.json"
    cfg.write_text("[" * 100_000)
    code, _, err = run_main("train", "--config", str(cfg), "--results", str(tmp_path / "r"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--config: cannot parse" in err and "nested too deeply" in err


def test_a_full_disk_in_report_is_one_line(tmp_path, tmpfs):
    """M12: a full disk gave OSError tracebacks from `report --out` (and a figure's job, the
    matrix summary): one line naming the file, exit 1; no half-written page left as if
    complete (every page is written atomically)."""
    results = tmp_path / "r"
    code, out, err = run_main(*TRAIN, "--results", str(results))
    assert code == 0, out + err
    full = tmpfs("64k")
    code, out, err = run_main("report", "--results", str(results), "--out", str(full / "rep"))
    assert code == 1, out + err
    (line,) = err.strip().splitlines()
    assert "error: no space left on the device writing " in line, line
    for page in full.rglob("*"):  # what was written is whole, or is not there
        assert not page.name.endswith(".tmp"), page


def test_the_report_trusts_no_rows_beyond_a_run_s_iterations(tmp_path):
    """M10: a 133 MB stats.jsonl of a million valid rows in a run of 2 iterations made the
    report take 52 s and 4.5 GB and write a 464 MB tidy.csv. A file larger than its run's
    iterations write is skipped with a warning; rows outside them are dropped."""
    results = tmp_path / "r"
    code, out, err = run_main(*TRAIN, "--no-eval", "--results", str(results))
    assert code == 0, out + err
    (run,) = [p for p in results.iterdir() if p.name.startswith("baseline-")]
    row = json.loads((run / "stats.jsonl").read_text().splitlines()[0])
    (run / "heldout.jsonl").write_text(json.dumps({**row, "iter": 999}) + "\n")  # beyond
    big = "".join(json.dumps({**row, "iter": i % 2}) + "\n" for i in range(200_000))
    (run / "stats.jsonl").write_text(big)
    code, out, err = run_main("report", "--results", str(results), "--out", str(tmp_path / "o"))
    assert code == 0, out + err
    assert "more than its run's iterations write" in out + err
    (tidy,) = (tmp_path / "o").rglob("tidy.csv")
    assert tidy.stat().st_size < 100_000 and ",999," not in tidy.read_text()


def test_a_run_whose_checkpoints_were_deleted_says_so_and_keeps_its_rows(tmp_path):
    """L1: deleting checkpoints/ restarted the run from 0 silently ("started"), its old
    statistics overwritten. It still trains again from iteration 0 (there is nothing to
    resume), but says so in its log and on the terminal, and keeps the earlier rows."""
    import shutil

    run = _interrupted_run(tmp_path)
    before = (run / "stats.jsonl").read_text()
    shutil.rmtree(run / "checkpoints")
    code, out, err = run_main(*TRAIN, "--iters", "6", "--checkpoint-every-iters", "2",
                              "--keep-checkpoints", "3", "--no-eval", "--results",
                              str(run.parent))  # fmt: skip
    assert code == 0, out + err
    assert "no checkpoint to resume from" in err and "trained again from iteration 0" in err
    (kept,) = run.glob("stats.jsonl.before-restart-*")
    assert kept.read_text() == before
    assert "the earlier rows kept in stats.jsonl.before-restart-" in (run / "log.txt").read_text()


def test_text_from_run_files_and_huge_values_print_safely(tmp_path):
    """L5, L6, L7 and L8's seed: a list of a million seeds in --config made a 7.9 MB error
    line; `--seed 2**64` said "got 1.84467e+19"; terminal escape codes in verdict.json were
    printed raw by `status`; a run named with # or ? broke the report's links."""
    from .conftest import DEMO_FAST

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"seed": list(range(10**6))}))
    code, _, err = run_main("train", "--config", str(cfg), "--results", str(tmp_path / "x"))
    assert code == 2 and err.strip() == (
        "reproduce train: error: --seed: expected int, got list of 1,000,000 items"
    ), err[:300]
    code, _, err = run_main("train", "--seed", str(2**64), "--results", str(tmp_path / "x"))
    assert code == 2 and err.strip().endswith("got 18,446,744,073,709,551,616"), err
    results = tmp_path / "r"
    code, out, err = run_main("matrix", *DEMO_FAST, "--arch", "mlp-generator", "--procedure",
                              "lsgan", "--no-eval", "--results", str(results))  # fmt: skip
    assert code == 0, out + err
    (run,) = [p for p in results.iterdir() if p.name.startswith("mlp-generator-")]
    (run / "verdict.json").write_text(json.dumps({"verdict": "\x1b[2J\x1b]0;owned\x07cleared"}))
    code, out, _ = run_main("status", "--results", str(results))
    assert code == 0 and "cleared" in out, out  # shown, without its escape codes
    assert "\x1b" not in out and "\x07" not in out, repr(out)
    # a run directory named with # and ?: its page and links still resolve
    code, out, err = run_main(*TRAIN, "--no-eval", "--name", "odd#name?x", "--results",
                              str(results))  # fmt: skip
    assert code == 0, out + err
    report = tmp_path / "rep"
    code, out, err = run_main("report", "--results", str(results), "--out", str(report))
    assert code == 0, out + err
    import re
    import urllib.parse

    for page in report.rglob("*.html"):
        for target in re.findall(r"(?:href|src)='([^']+)'", page.read_text()):
            assert "#" not in target and "?" not in target, (page, target)
            resolved = (page.parent / urllib.parse.unquote(target)).resolve()
            assert resolved.exists(), (page, target)


def test_the_low_findings_of_l8_are_one_line_each(tmp_path, monkeypatch):
    """L8: junk in $REPRODUCE_FAULTS was a traceback mid-run; `train --resume RUN --results
    X` ignored --results silently; `figures --cifar` errors said `--data:`; a fetched file
    named `--url:` when the URL came from $REPRODUCE_INCEPTION_URL."""
    for junk, why in (("explode", "unknown fault 'explode'"),
                      ("step-sleep=abc", "step-sleep=S needs seconds"),
                      ("nan@x", "nan@K needs an iteration K")):  # fmt: skip
        monkeypatch.setenv("REPRODUCE_FAULTS", junk)
        code, _, err = run_main(*TRAIN, "--results", str(tmp_path / "x"))
        assert code == 2 and len(err.strip().splitlines()) == 1 and why in err, err
        assert "$REPRODUCE_FAULTS: " in err and not (tmp_path / "x").exists()
    monkeypatch.delenv("REPRODUCE_FAULTS")
    run = _interrupted_run(tmp_path)
    code, _, err = run_main("train", "--resume", str(run), "--results", str(tmp_path / "else"))
    assert code == 2 and "--results: --resume" in err and "(it was ignored)" in err, err
    code, _, err = run_main("train", "--resume", str(run), "--results", str(run.parent))
    assert code == 0, err  # its own results directory: fine
    bad = tmp_path / "not-cifar.tar.gz"
    bad.write_bytes(b"junk")
    code, _, err = run_main("figures", "fig3", "--cifar", str(bad), "--results",
                            str(tmp_path / "f"))  # fmt: skip
    assert code == 2 and err.strip().startswith("reproduce figures: error: --cifar: "), err
    monkeypatch.setenv("REPRODUCE_INCEPTION_URL", f"file://{bad}")
    code, _, err = run_main("fetch-weights", "--cache", str(tmp_path / "c"))
    assert code == 2 and "$REPRODUCE_INCEPTION_URL" in err and "--url" not in err, err


def test_a_matrix_whose_cell_is_busy_elsewhere_exits_75(tmp_path):
    """L8: a matrix whose cells were being trained by another process exited 1, as if one
    had failed; it exits 75 (try again later), as `train` does for a busy run."""
    from reproduce.rundir.lease import Lease

    from .conftest import DEMO_FAST

    results = tmp_path / "r"
    args = ["matrix", *DEMO_FAST, "--arch", "mlp-generator", "--procedure", "lsgan",
            "--no-eval", "--executor", "debug", "--results", str(results)]  # fmt: skip
    code, out, err = run_main(*args, "--dry-run")
    assert code == 0, out + err
    name = next(w for w in out.split() if w.startswith("mlp-generator-lsgan-"))
    (results / name).mkdir(parents=True)
    lease = Lease(results / name)
    assert lease.acquire()  # held by a live process: this one
    try:
        code, out, err = run_main(*args)
    finally:
        lease.release()
    assert code == 75, out + err
    assert out.startswith("1 cells: 0 to run, 1 running or queued elsewhere\n"), out
    code, out, err = run_main(*args)  # and once it is free, it trains
    assert code == 0, out + err
