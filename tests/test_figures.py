"""The paper's figures: Figure 1's claims checked on the computed numbers; Figures 3 and 5a
end to end on small synthetic inputs (a tiny CIFAR-10 python archive, the demo data); the
toy runs resume exactly; bad figure requests fail first."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from reproduce.config.runtime import RuntimeConfig
from reproduce.evaluation import metrics
from reproduce.fileio import read_jsonl
from reproduce.training.toy import ToyTrainer, load_result, run_toy, toy_config

from .conftest import run_cli, tree
from .inception import make_random_inception_weights


def _figure(results: Path, name: str) -> dict:
    assert (results / "figures" / f"{name}.png").stat().st_size > 1000
    assert (results / "figures" / f"{name}.pdf").stat().st_size > 1000
    return json.loads((results / "figures" / f"{name}.json").read_text())


def test_figure_1b_gradient_norms_explode_vanish_or_stay_flat(tmp_path):
    """SPEC.md C.2 at the paper's width (512) and batch (256), 20 generator iterations
    (clipping at 0.1 needs about 20 to show its growth), the four runs two at a time as
    `figures` runs them (94 s alone on the project's 2-core CPU on 2026-12-04; one after the
    other in-process, 126 s): clipping at 0.1 grows the gradient with depth, 0.01 and 0.001
    shrink it by orders of magnitude across the 12 layers, the penalty keeps it within about
    one order; clipped weights pile up at +-c."""
    r = run_cli("figures", "fig1b", "--toy-iters", "20", "--executor", "local", "--workers",
                "2", "--results", str(tmp_path), timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr
    nums = _figure(tmp_path, "fig1b")
    logs = {k: np.array(v["log10_layer_grad_norms"]) for k, v in nums.items() if k != "figure"
            and isinstance(v, dict)}  # fmt: skip
    assert set(logs) == {"clip c=0.1", "clip c=0.01", "clip c=0.001", "gradient penalty"}
    for g in logs.values():
        assert len(g) == 13  # 12 ReLU layers and the output
    # index 0 = layer 1 (nearest the input), index 12 = layer 13 (the critic output)
    up = logs["clip c=0.1"]
    assert up[0] - up[12] > 0.5, up  # grows with depth (backwards from the output)
    assert np.all(np.diff(up) < 0.05), up  # monotone, layer by layer
    for c, at_least in (("0.01", 5.0), ("0.001", 10.0)):
        down = logs[f"clip c={c}"]
        assert down[12] - down[0] > at_least, down  # vanishes by orders of magnitude
        assert np.all(np.diff(down) > 0), down
    gp = logs["gradient penalty"]
    assert gp.max() - gp.min() < 1.0, gp  # within an order of magnitude
    for c in ("0.1", "0.01", "0.001"):
        # a uniform distribution on [-c, c] puts 1% of the weights within 1% of the bound
        assert nums[f"clip c={c}"]["weights_at_clip_fraction"] > 0.05
        assert nums[f"clip c={c}"]["weights_abs_max"] == pytest.approx(float(c))
    for c in ("0.01", "0.001"):
        assert nums[f"clip c={c}"]["weights_at_clip_fraction"] > 0.9  # piled up at +-c
    assert nums["gradient penalty"]["weights_abs_max"] > 0.1  # not confined to a box


def test_figure_1a_surfaces_and_the_penalty_makes_slopes_one(tmp_path):
    r = run_cli("figures", "fig1a", "--toy-iters", "60", "--executor", "debug",
                "--results", str(tmp_path), timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr
    nums = _figure(tmp_path, "fig1a")
    for d in ("8gaussians", "25gaussians", "swissroll"):
        clip, gp = nums[f"{d}/clip"], nums[f"{d}/gp"]
        arrays, _ = load_result(tmp_path / gp["run_id"])
        assert arrays["surface"].shape == (128, 128) and np.isfinite(arrays["surface"]).all()
        assert arrays["real_points"].shape == (1000, 2)
        # the penalty drives ||grad D|| to 1 at the interpolates; clipping keeps it far below
        assert 0.7 < gp["slope_mean"] < 1.3, gp
        assert clip["slope_mean"] < 0.5, clip
    # a second invocation trains nothing and draws again
    r = run_cli("figures", "fig1a", "--toy-iters", "60", "--executor", "debug",
                "--results", str(tmp_path))  # fmt: skip
    assert r.returncode == 0 and "0 runs to train" in r.stdout, r.stdout + r.stderr


def test_toy_run_resumes_exactly(tmp_path):
    cfg = toy_config("1b", "swissroll", "gp", iters=6, width=16, batch_size=8, layers=3)
    run_toy(cfg, tmp_path / "full", checkpoint_every=0)
    calls = {"n": 0}

    def stop_after_three() -> bool:
        calls["n"] += 1
        return calls["n"] == 3

    out = run_toy(cfg, tmp_path / "cut", stop=stop_after_three, checkpoint_every=0)
    assert (out.state, out.iteration) == ("interrupted", 3)
    assert run_toy(cfg, tmp_path / "cut").state == "completed"
    a, _ = load_result(tmp_path / "full")
    b, _ = load_result(tmp_path / "cut")
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert run_toy(cfg, tmp_path / "cut").state == "already-completed"


@pytest.mark.parametrize("figure", ["1a", "1b"])
@pytest.mark.parametrize("method", ["clip", "gp"])
def test_toy_training_is_the_toy_codes_algorithm_to_the_bit(figure, method):
    """Toy runs train through the image runs' procedure, engine and iteration schedule
    (issue 20). A plain loop of gan_toy.py's algorithm, written out here (generator step
    first and none at iteration 0, the critic frozen during it; n_critic critic steps of
    E[D(fake)] - E[D(real)] plus lambda times the penalty, or clipping after each step; TF1's
    RMSProp or Adam), on the same random streams, gives the same weights to the bit."""
    import torch

    from reproduce.data.datasets import derive_seed
    from reproduce.gan.optim import TFAdam, TFRMSprop
    from reproduce.gan.penalties import gradient_penalty
    from reproduce.training.toy import ToyData, ToyMLP

    cfg = toy_config(figure, "swissroll", method, iters=3, width=16, batch_size=32, layers=3)
    trainer = ToyTrainer(cfg)
    for _ in range(cfg.iters):
        trainer.step()

    torch.manual_seed(derive_seed(cfg.seed, "toy-init"))
    D = ToyMLP(2, 16, 3, 1)
    G = ToyMLP(2, 16, 3, 2) if figure == "1b" else None

    def opt(net):
        if method == "gp":
            return TFAdam(net.parameters(), lr=1e-4, betas=(0.5, 0.9), eps=1e-8)
        return TFRMSprop(net.parameters(), lr=5e-5)

    opt_d, opt_g = opt(D), (opt(G) if G is not None else None)
    data = ToyData("swissroll", 32, cfg.seed)
    noise = torch.Generator().manual_seed(derive_seed(cfg.seed, "toy-noise"))
    for it in range(cfg.iters):
        if G is not None and it > 0:
            z = torch.randn(32, 2, generator=noise)
            D.requires_grad_(False)
            loss = -D(G(z)).mean()
            opt_g.zero_grad()
            loss.backward()
            opt_g.step()
            D.requires_grad_(True)
        for _ in range(5):
            real = data.next()
            z = torch.randn(32, 2, generator=noise)
            with torch.no_grad():
                fake = real + z if G is None else G(z)
            d_real, d_fake = D(real), D(fake)
            loss = d_fake.mean() - d_real.mean()
            if method == "gp":
                alpha = torch.rand(32, 1, generator=noise)
                loss = loss + 10.0 * gradient_penalty(D, real, fake, alpha)[0]
            opt_d.zero_grad()
            loss.backward()
            opt_d.step()
            if method == "clip":
                with torch.no_grad():
                    for p in D.parameters():
                        p.clamp_(-0.01, 0.01)
    nets = [(trainer.D, D)] + ([(trainer.G, G)] if G is not None else [])
    for ours, plain in nets:
        for (name, a), b in zip(
            ours.state_dict().items(), plain.state_dict().values(), strict=True
        ):
            assert torch.equal(a, b), name


def test_toy_data_matches_the_toy_code():
    """8 Gaussians at radius 2/1.414, 25 Gaussians on a 5x5 grid / 2.828, Swiss roll / 7.5."""
    t = ToyTrainer(toy_config("1a", "8gaussians", "gp", iters=1, width=4, batch_size=4096))
    x = t.data.next()
    r = x.norm(dim=1)
    assert abs(r.mean().item() - 2 / 1.414) < 0.01
    t = ToyTrainer(toy_config("1a", "25gaussians", "gp", iters=1, width=4, batch_size=4096))
    x = t.data.next().numpy() * 2.828
    assert np.abs(x - np.round(x / 2) * 2).max() < 0.3  # near the even-integer grid
    t = ToyTrainer(toy_config("1a", "swissroll", "gp", iters=1, width=4, batch_size=4096))
    x = t.data.next()
    assert x.shape == (4096, 2) and x.abs().max() < 15 / 7.5 + 0.5


def _tiny_cifar(path: Path, n_train: int = 40, n_test: int = 16) -> Path:
    """The standard archive's layout: cifar-10-batches-py/data_batch_1..5, test_batch, each a
    pickled dict with b'data' (N, 3072) uint8 and b'labels'."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for name, n in [*((f"data_batch_{i}", n_train // 5) for i in range(1, 6)),
                        ("test_batch", n_test)]:  # fmt: skip
            y, x = np.mgrid[0:32, 0:32]
            imgs = []
            for _ in range(n):
                c = rng.integers(0, 256, 3)
                mask = ((x - 16) ** 2 + (y - 16) ** 2) < rng.integers(20, 200)
                img = np.where(mask[None], c[:, None, None], 255 - c[:, None, None])
                imgs.append(img.astype(np.uint8).reshape(-1))
            blob = pickle.dumps({b"data": np.stack(imgs), b"labels": list(range(n))})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def test_figure_3_end_to_end_on_a_tiny_cifar_archive(tmp_path):
    archive = _tiny_cifar(tmp_path / "cifar-10-python.tar.gz")
    made = make_random_inception_weights(tmp_path / "random.pth")
    weights = metrics.stage_weights(tmp_path / "staged", made.as_uri()).path
    results = tmp_path / "results"
    r = run_cli("figures", "fig3", "--cifar", str(archive), "--executor", "debug",
                "--results", str(results), "--inception-weights", weights, "--dim", "8",
                "--batch-size", "8", "--iters", "4", "--eval-every", "2", "--eval-samples", "20",
                "--final-eval-samples", "20", "--reference-samples", "20", "--no-count-flops",
                timeout=1200)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    nums = _figure(results, "fig3")
    methods = {row["method"] for row in nums["final"]}
    assert methods == {"Weight clipping (RMSProp)", "Gradient penalty (RMSProp)",
                       "Gradient penalty (Adam)", "DCGAN (Adam)"}  # fmt: skip
    for row in nums["final"]:
        assert row["step"] == 4 and row["train_seconds"] > 0 and row["inception_score"] >= 1
    runs = [d for d in results.iterdir() if d.name.startswith("cifar-")]
    assert len(runs) == 4
    for d in runs:
        cfg = json.loads((d / "config.json").read_text())["config"]
        assert cfg["dataset"] == "cifar10" and cfg["arch"] == "cifar"
        # SPEC.md C.5: batch norm in the critic except under the penalty (no layer norm)
        assert cfg["critic_norm"] == ("none" if cfg["procedure"] == "wgan-gp" else "batch")
        rows = read_jsonl(d / "metrics.jsonl")
        # periodic every 2 iterations; the last one is the final evaluation
        assert [(x["iter"], x["kind"]) for x in rows] == [(2, "periodic"), (4, "final")]
        secs = [x["train_seconds"] for x in rows]
        assert secs[0] < secs[1]  # the wall-clock axis grows


def test_figure_5a_end_to_end_and_heldout_changes_no_training_number(tmp_path):
    results = tmp_path / "results"
    common = ("--executor", "debug", "--iters", "7", "--heldout-every", "2", "--no-count-flops")
    r = run_cli("figures", "fig5a", "--results", str(results), *common)
    assert r.returncode == 0, r.stdout + r.stderr
    nums = _figure(results, "fig5a")
    assert {row["split"] for row in nums["final"]} == {"train", "held-out"}
    (run,) = [results / i for i in nums["run_ids"]]
    held = read_jsonl(run / "heldout.jsonl")
    assert [h["iter"] for h in held] == [2, 4, 6, 7]  # every 2 and at the last iteration
    # the dry-run's time estimate counts the same (it once left out the last one)
    assert RuntimeConfig(results=str(results), heldout_every=2).heldout_count(7) == len(held)
    assert all(np.isfinite(h["critic_loss"]) and "gp" in h for h in held)
    # the same cell without held-out losses: identical training statistics
    other = tmp_path / "other"
    r = run_cli("train", "--arch", "baseline", "--procedure", "wgan-gp", "--dim", "8",
                "--batch-size", "16", "--iters", "7", "--no-heldout", "--no-count-flops",
                "--no-progress", "--results", str(other), "--log-every", "4",
                "--sample-every", "0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    (plain,) = [p for p in other.iterdir() if (p / "config.json").exists()]
    assert not (plain / "heldout.jsonl").exists()
    strip = lambda rows: [{k: v for k, v in x.items() if k != "time"} for x in rows]  # noqa: E731
    assert strip(read_jsonl(plain / "stats.jsonl")) == strip(read_jsonl(run / "stats.jsonl"))


def test_the_showcase_trains_both_cells_on_shapes_and_draws_their_progress(tmp_path):
    """The showcase end to end at a tiny length: the baseline pair with DCGAN and WGAN-GP on
    the shapes data, each at its paper hyperparameters, judged; grids over iterations beside
    the real images, and the judge's curves."""
    from reproduce.reporting import figures

    results = tmp_path / "results"
    tiny = ("--iters", "8", "--eval-every", "4", "--sample-every", "1", "--dim", "8")
    r = run_cli("figures", "showcase", "--results", str(results), "--executor", "debug", *tiny)
    assert r.returncode == 0, r.stdout + r.stderr
    nums = _figure(results, "showcase")
    assert (results / "figures" / "showcase-scores.png").stat().st_size > 1000
    assert nums["data"] == "shapes" and nums["real_is"] > 7.5
    cells = {c["procedure"]: c for c in nums["cells"]}
    assert set(cells) == {"dcgan", "wgan-gp"}
    for proc, c in cells.items():
        assert c["arch"] == "baseline" and c["iters"] == 8 and c["batch_size"] == 16
        assert c["lr"] == {"dcgan": 2e-4, "wgan-gp": 1e-4}[proc]  # the paper's
        assert [e["iter"] for e in c["evaluations"]] == [4, 8]
        # the grids nearest 1/16, 1/8, 1/4, 1/2 and all of the run, each once
        assert c["grids"] == [1, 2, 4, 8] and isinstance(c["verdict"], str)
        cfg = json.loads((results / c["run_id"] / "config.json").read_text())
        assert cfg["config"]["dataset"] == "shapes" and cfg["dataset"]["source"] == "shapes"
    # the figure's own settings, unless flags override them; not one of the paper's figures
    assert figures.SHOWCASE["dim"] == 16 and "showcase" not in figures.resolve_names([])
    r = run_cli("figures", "showcase", "--dry-run", "--results", str(tmp_path / "dry"))
    assert r.returncode == 0 and r.stdout.count("pending") == 2, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["fig9"], "unknown figure 'fig9'"),
        (["showcase", "--profile", "paper"], "the showcase is a CPU figure"),
        (["fig3"], "--cifar"),
        (["fig2", "--profile", "paper"], "--data"),
        (["fig1", "--profile", "fast"], "--profile"),
        (["fig1", "--profile", "quick"], "'quick' is now called 'demo'"),
        (["fig1", "--toy-iters", "0"], "--toy-iters"),
        (["fig3", "--cifar", "/nonexistent/cifar.tar.gz"], "--cifar"),  # it said --data
        (["fig1", "--executor", "slrum"], "did you mean 'slurm'"),
    ],
)
def test_bad_figure_requests_fail_first(tmp_path, args, needle):
    results = tmp_path / "results"
    r = run_cli("figures", *args, "--results", str(results))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert tree(results) == []


def test_a_toy_run_that_lost_its_lease_stops_before_its_next_step(tmp_path, monkeypatch):
    """As an image run does: the lease is checked before each step, so a run taken over by
    another process trains no further step and writes no result (the check used to come
    after the step, which then ran once more)."""
    from reproduce.training import toy

    real_claim = toy.claim

    def claim_then_lose(rd, doc):
        claimed = real_claim(rd, doc)

        class Lost:
            def __enter__(self):
                lease = claimed.__enter__()
                lease.lost = True  # what the heartbeat sets when another process takes over
                return lease

            def __exit__(self, *exc):
                return claimed.__exit__(*exc)

        return Lost()

    monkeypatch.setattr(toy, "claim", claim_then_lose)
    cfg = toy_config("1b", "swissroll", "gp", iters=6, width=16, batch_size=8, layers=3)
    out = toy.run_toy(cfg, tmp_path / "run", checkpoint_every=0)
    assert (out.state, out.iteration) == ("lost", 0)
    assert isinstance(out, toy.Outcome)
    assert not (tmp_path / "run" / "result.json").exists()
