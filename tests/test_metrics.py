"""Inception score, FID and KID through the real torch-fidelity path, with a randomly
initialised weights file of the exact InceptionV3 architecture (no network here)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
import torch_fidelity
from torch_fidelity.metric_isc import isc_features_to_metric

from reproduce.config.runtime import RuntimeConfig
from reproduce.data.images import to_uint8
from reproduce.evaluation import metrics
from reproduce.fileio import read_jsonl
from reproduce.rundir.rundir import RunDir
from reproduce.training.loop import train_run

from .conftest import cli_env, popen_cli, quiet_runtime, run_cli, run_main, small_config, tree
from .inception import make_random_inception_weights

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """Random weights of the exact network, staged like fetch-weights does (checksum beside
    them), so the many processes below verify them by checksum, not by a full load."""
    made = make_random_inception_weights(tmp_path_factory.mktemp("inception") / "random.pth")
    staged = metrics.stage_weights(tmp_path_factory.mktemp("staged"), made.as_uri())
    return Path(staged.path)


@pytest.fixture(scope="module")
def weights(weights_file) -> metrics.InceptionWeights:
    return metrics.verify_weights(weights_file)


def test_uint8_conversion_matches_the_formula():
    x = torch.tensor([-1.0, 0.0, 1.0])
    # ((x + 1) * 255.99 / 2) truncated: 0, 127 (127.995), 255 (255.99)
    assert to_uint8(x).tolist() == [0, 127, 255]
    assert to_uint8(torch.tensor([-0.5])).item() == int((0.5) * 255.99 / 2)


def test_wrapper_equals_a_direct_calculate_metrics_call(weights, demo):
    images = demo.images[:20]
    protocol = metrics.Protocol(num_samples=20, fid=False, kid=False)
    ours = metrics.inception_metrics(images, weights, protocol, CPU)
    direct = torch_fidelity.calculate_metrics(
        input1=metrics.UInt8Images(images), isc=True, feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=weights.path, isc_splits=10, samples_shuffle=False,
        rng_seed=2020, batch_size=64, cuda=False, save_cpu_ram=True, verbose=False, cache=False,
    )  # fmt: skip
    assert ours[metrics.IS_MEAN] == direct[metrics.IS_MEAN]
    assert ours[metrics.IS_STD] == direct[metrics.IS_STD]
    assert ours[metrics.IS_MEAN] > 1.0001  # the random network tells the images apart


def test_copies_of_one_image_score_one(weights, demo):
    copies = demo.images[7:8].repeat(20, 1, 1, 1)
    out = metrics.inception_metrics(copies, weights, metrics.Protocol(num_samples=20), CPU)
    assert abs(out[metrics.IS_MEAN] - 1.0) < 1e-6


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_certain_logits_in_k_equal_classes_score_k(k):
    """torch-fidelity's IS metric, as our protocol calls it (10 splits, in order)."""
    n = 10 * k * 3  # every split holds each of the k classes equally often
    logits = torch.zeros(n, 1008)
    logits[torch.arange(n), torch.arange(n) % k * 7] = 60.0  # softmax puts ~1 on one class
    protocol = metrics.Protocol(num_samples=n)
    out = isc_features_to_metric(logits, protocol.splits, protocol.shuffle, protocol.rng_seed)
    assert out[metrics.IS_MEAN] == pytest.approx(k, abs=1e-6)
    assert out[metrics.IS_STD] == pytest.approx(0.0, abs=1e-6)


def test_fid_and_kid_against_a_reference_with_cached_features(weights, demo, tmp_path):
    protocol = metrics.Protocol(num_samples=20)
    ref = demo.images[200:220]
    out = metrics.inception_metrics(demo.images[:20], weights, protocol, CPU, reference=ref,
                                    reference_name="ref-a", cache_root=tmp_path)  # fmt: skip
    assert out[metrics.FID] > 0 and out["kid_subset_size_used"] == 20
    assert sorted(p.name for p in tmp_path.glob("ref-a-*.pt"))  # reference features cached
    same = metrics.inception_metrics(ref, weights, protocol, CPU, reference=ref,
                                     reference_name="ref-a", cache_root=tmp_path)  # fmt: skip
    # a set against itself: FID 0 up to the matrix square root of a rank-19 covariance (20
    # samples in 2048 dimensions), which is accurate to about 1e-5. (KID, an unbiased MMD
    # estimate over subsets of 20, is too noisy at this size to compare; it is computed on the
    # recorded subset size.)
    assert abs(same[metrics.FID]) < 1e-3 < out[metrics.FID]
    assert same["kid_subset_size_used"] == 20 and abs(same[metrics.KID_MEAN]) < 0.1


def test_verdicts():
    t = metrics.VerdictThresholds(is_ratio=0.5, diversity_ratio=0.5)
    base = {metrics.IS_MEAN: 3.0, "real_" + metrics.IS_MEAN: 4.0, "diversity": 30.0,
            "real_diversity": 32.0}  # fmt: skip
    assert metrics.verdict("completed", base, t)["verdict"] == "trained"
    low = {**base, metrics.IS_MEAN: 1.5}
    assert metrics.verdict("completed", low, t)["verdict"] == "low-quality"
    collapsed = {**base, "diversity": 3.0}
    v = metrics.verdict("completed", collapsed, t)
    assert v["verdict"] == "collapsed" and v["thresholds"] == {
        "is_ratio": 0.5,
        "diversity_ratio": 0.5,
        "modes_ratio": 0.5,
    }
    assert metrics.verdict("diverged", None, t)["verdict"] == "diverged"
    assert metrics.verdict("running", base, t)["verdict"] == "incomplete"
    assert metrics.verdict("completed", None, t)["verdict"] == "unevaluated"
    assert metrics.diversity(torch.zeros(10, 3, 4, 4, dtype=torch.uint8)) == 0.0


EVAL = ["--eval", "--eval-every", "2", "--eval-samples", "20", "--final-eval-samples", "20",
        "--reference-samples", "20"]  # fmt: skip


def test_periodic_evaluation_steps_and_no_recompute_on_resume(weights_file, tmp_path):
    """A demo run given a weights file records IS/FID/KID with provenance at iterations 2, 4
    (periodic) and 6 (final); killed and resumed, it never computes a recorded one again."""
    results = tmp_path / "r"
    args = ["train", "--dim", "8", "--batch-size", "4", "--iters", "6", "--threads", "1",
            "--checkpoint-every-iters", "3", "--log-every", "1", "--no-progress",
            "--results", str(results), *EVAL, "--inception-weights", str(weights_file)]  # fmt: skip
    proc = popen_cli(*args)
    from .procs import wait_for

    def evaluated_4() -> bool:
        rows = [r for p in results.glob("*/metrics.jsonl") for r in read_jsonl(p)]
        return any(r["iter"] == 4 for r in rows)

    try:
        wait_for(evaluated_4, proc, timeout=300)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    (run,) = [p for p in results.iterdir() if (p / "config.json").exists()]
    before = read_jsonl(run / "metrics.jsonl")
    assert [(r["iter"], r["kind"]) for r in before] == [(2, "periodic"), (4, "periodic")]
    r = run_cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = read_jsonl(run / "metrics.jsonl")
    assert [(r["iter"], r["kind"]) for r in rows] == [
        (2, "periodic"),
        (4, "periodic"),
        (6, "final"),
    ]
    assert rows[:2] == before  # recorded evaluations untouched, not recomputed
    log = (run / "log.txt").read_text()
    resumed = log[log.index("resumed from ckpt-00000003") :]
    assert "periodic evaluation at iteration 4" not in resumed  # retrained past 4, not re-evaluated
    final = rows[-1]
    for key in (metrics.IS_MEAN, metrics.IS_STD, metrics.FID, metrics.KID_MEAN, metrics.KID_STD,
                "diversity", "real_" + metrics.IS_MEAN, "real_diversity"):  # fmt: skip
        assert isinstance(final[key], float), key
    assert final["torch_fidelity"] == torch_fidelity.__version__
    assert final["weights_sha256"] == metrics.sha256_file(weights_file)
    assert final["feature_extractor"] == "inception-v3-compat"
    assert final["protocol"]["num_samples"] == 20 and final["protocol"]["splits"] == 10
    assert final["protocol"]["shuffle"] is False and final["protocol"]["rng_seed"] == 2020
    verdict = json.loads((run / "verdict.json").read_text())
    assert verdict["verdict"] in {"trained", "low-quality", "collapsed"} and verdict["thresholds"]
    assert json.loads((run / "status.json").read_text())["verdict"] == verdict["verdict"]


def test_evaluation_does_not_change_training(small_demo, weights, tmp_path):
    cfg = small_config(small_demo, iters=4)
    plain = RunDir(tmp_path / "plain")
    train_run(cfg, quiet_runtime(tmp_path), small_demo, plain, CPU)
    rt = RuntimeConfig(results=str(tmp_path), progress=False, eval=True, eval_every=2,
                       eval_samples=20, final_eval_samples=20, reference_samples=20,
                       inception_weights=weights.path, inception_sha256=weights.sha256)  # fmt: skip
    evaluated = RunDir(tmp_path / "evaluated")
    assert train_run(cfg, rt, small_demo, evaluated, CPU).state == "completed"
    assert [r["iter"] for r in read_jsonl(evaluated.path / "metrics.jsonl")] == [2, 4]
    a = [{k: v for k, v in r.items() if k != "time"} for r in plain.read_stats()]
    b = [{k: v for k, v in r.items() if k != "time"} for r in evaluated.read_stats()]
    assert a == b  # the same losses at every iteration


def test_weights_changed_after_submission_fail_the_job(small_demo, weights, tmp_path):
    cfg = small_config(small_demo, iters=2)
    rt = RuntimeConfig(results=str(tmp_path), progress=False, eval=True,
                       inception_weights=weights.path, inception_sha256="0" * 64)  # fmt: skip
    rd = RunDir(tmp_path / "run")
    out = train_run(cfg, rt, small_demo, rd, CPU)
    assert out.state == "failed" and "changed since submission" in out.message
    assert "fetch-weights" in out.message
    assert rd.read_status()["reason"] == "inception-weights"
    assert not (rd.path / "checkpoints").exists()  # failed before any training


def offline_env(tmp_path: Path) -> dict[str, str]:
    """No cached weights and a download URL that cannot be reached."""
    return cli_env(TORCH_HOME=str(tmp_path / "torch-home"),
                   REPRODUCE_INCEPTION_URL=f"file://{tmp_path}/no-such-file.pth")  # fmt: skip


def test_offline_run_without_weights_fails_before_training(tmp_path):
    r = run_cli("train", "--eval", "--judge", "inception", "--results", str(tmp_path / "r"),
                env=offline_env(tmp_path))  # fmt: skip
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "Inception weights are not cached and cannot be downloaded" in line
    assert "python -m reproduce fetch-weights --cache DIR" in line
    assert not (tmp_path / "r").exists()


def test_corrupt_weights_fail_before_training(weights_file, tmp_path, monkeypatch):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(weights_file.read_bytes()[:100_000])
    before = tree(tmp_path)
    code, _, err = run_main("train", "--eval", "--results", str(tmp_path / "r"),
                            "--inception-weights", str(truncated))  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "is not a valid Inception weights file" in err and "fetch-weights" in err
    # a staged file whose bytes changed afterwards: the checksum catches it
    staged = tmp_path / "staged" / metrics.WEIGHTS_FILENAME
    staged.parent.mkdir()
    staged.write_bytes(weights_file.read_bytes())
    (staged.parent / (staged.name + ".sha256")).write_text("0" * 64 + "  x\n")
    code, _, err = run_main("train", "--eval", "--results", str(tmp_path / "r"),
                            "--inception-weights", str(staged))  # fmt: skip
    assert code == 2 and "is corrupt" in err and "fetch-weights" in err
    assert not (tmp_path / "r").exists()
    monkeypatch.setenv(metrics.ENV_WEIGHTS, str(tmp_path / "missing.pth"))
    code, _, err = run_main("train", "--eval", "--judge", "inception", "--results",
                            str(tmp_path / "r"))  # fmt: skip
    assert code == 2 and f"{metrics.ENV_WEIGHTS}: Inception weights not found" in err
    assert set(tree(tmp_path)) == set(before) | {"staged", f"staged/{staged.name}",
                                                  f"staged/{staged.name}.sha256"}  # fmt: skip


def test_fetch_weights_from_a_local_url(weights_file, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    code, out, err = run_main("fetch-weights", "--cache", str(cache), "--url",
                              f"file://{weights_file}")  # fmt: skip
    assert code == 0, err
    staged = cache / metrics.WEIGHTS_FILENAME
    digest = metrics.sha256_file(weights_file)
    assert staged.read_bytes() == weights_file.read_bytes()
    assert (cache / (staged.name + ".sha256")).read_text().split()[0] == digest
    assert f"sha256 {digest}" in out and f"--inception-weights {staged}" in out
    # the staged file is what a run without --inception-weights finds in torch-fidelity's cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    hub = tmp_path / "th" / "hub" / "checkpoints"
    code, _, err = run_main("fetch-weights", "--url", f"file://{weights_file}")
    assert code == 0 and (hub / metrics.WEIGHTS_FILENAME).is_file(), err
    # the real process: a bad URL is one line and exit code 2, nothing staged
    bad = run_cli(
        "fetch-weights", "--cache", str(tmp_path / "c2"), "--url", f"file://{tmp_path}/nope"
    )
    assert bad.returncode == 2 and "cannot download the Inception weights" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "c2").exists()


def test_default_evaluation_cadence_costs_under_ten_percent_of_training(weights_file, demo):
    """FLOPs of the default evaluations (20 periodic of 5,000 samples + a final of 50,000)
    against 200,000 training iterations at batch 64, for the cheapest iterations of every
    architecture (DCGAN/LSGAN: one critic step; the WGANs do five). Counted at batch 2 and
    scaled: every op here is linear in the batch."""
    from torch.utils.flop_counter import FlopCounterMode
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from architectures import PAIRS
    from reproduce.training.trainer import Trainer

    rt = RuntimeConfig(judge="inception")
    fe = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                     feature_extractor_weights_path=str(weights_file))  # fmt: skip
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        fe(demo.images[:1])
    inception = fc.get_total_flops()
    assert 10e9 < inception < 13e9  # InceptionV3 at 299x299: 11.4 GFLOP per image
    evals = rt.eval_interval(200_000)
    n_eval = (200_000 // evals - 1) * rt.samples("periodic") + rt.samples("final")
    for arch in PAIRS:
        cfg = small_config(demo, arch=arch, procedure="dcgan", dim=64, batch_size=2)
        trainer = Trainer(cfg, demo, CPU)
        trainer.step()
        with FlopCounterMode(display=False) as fc:
            trainer.step()
        per_iteration = fc.get_total_flops() * 64 / 2
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            trainer.G(torch.randn(2, 128))
        per_sample = fc.get_total_flops() / 2 + inception
        ratio = n_eval * per_sample / (200_000 * per_iteration)
        assert ratio < 0.10, (arch, ratio)


def test_the_cpu_estimate_says_it_leaves_out_inceptions_scoring(weights_file, tmp_path):
    # the cost tables hold the demo judge's scoring, not Inception's: the estimate says so
    # rather than passing the demo judge's cost off as Inception's
    code, out, err = run_main("matrix", "--profile", "demo", "--arch", "baseline",
                              "--inception-weights", str(weights_file), "--results",
                              str(tmp_path), "--workers", "2", "--dry-run")  # fmt: skip
    assert code == 0, err
    line = out.strip().splitlines()[-1]
    assert line.startswith("estimated wall time: "), line
    assert "Inception's scoring of the evaluations not counted" in line, line
    code, out, err = run_main("matrix", "--profile", "demo", "--arch", "baseline",
                              "--results", str(tmp_path), "--dry-run")  # fmt: skip
    assert code == 0 and "not counted" not in out, out + err
