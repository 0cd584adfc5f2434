"""Hostile files, round two (issue 46): no code runs from any file torch-fidelity loads, no
checkpoint field is trusted, nothing is written or deleted through a link. Each payload test
asserts that its marker file never appears."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from reproduce.evaluation import metrics

from .conftest import run_cli, run_main, tree
from .inception import make_random_inception_weights

TRAIN = ("train", "--dim", "8", "--batch-size", "4", "--iters", "2", "--final-eval-samples",
         "100", "--no-progress")  # fmt: skip


class Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


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
