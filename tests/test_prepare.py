"""prepare-data on a real LMDB in the official LSUN layout and on image folders: shapes, the
crop, RGB conversion, skipped counts, the held-out split, determinism, resume after SIGKILL,
bad inputs, and training on the prepared cache end to end."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reproduce.data import imagecache, prepare
from reproduce.data.datasets import load_dataset
from reproduce.data.prepare import Options, held_out
from reproduce.errors import UserError
from reproduce.fileio import read_json

from .conftest import REPO, assert_states_equal, cli_env, load_final_state, run_cli, run_main, tree
from .lsun import GRAY_KEY, PATTERN_KEY, make_folder, make_lmdb
from .procs import wait_for

QUIET = Options(workers=2, progress=False)
# the module's LMDB: 3 corrupt values in 245 (1.2%), above the default 1% threshold
LSUN_OPTS = Options(workers=2, progress=False, val_fraction=0.2, shard_rows=64, max_skipped=0.02)
LSUN_ARGS = ["--val-fraction", "0.2", "--shard-rows", "64", "--max-skipped", "0.02"]


@pytest.fixture(scope="module")
def lsun(tmp_path_factory):
    return make_lmdb(tmp_path_factory.mktemp("lsun") / "bedroom_train_lmdb", n=240, corrupt=3)


@pytest.fixture(scope="module")
def cache(lsun, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "bedroom-64"
    return prepare.prepare(lsun.path, out, LSUN_OPTS)


def row_of(lsun, key: bytes) -> int:
    return lsun.keys.index(key)


def test_lmdb_cache_shapes_counts_split_and_manifest(lsun, cache):
    m = cache.manifest
    images = np.load(cache.path / imagecache.IMAGES, mmap_mode="r")
    assert images.shape == (len(lsun.keys), 3, 64, 64) and images.dtype == np.uint8
    assert m["skipped"] == {"unreadable": 3, "too-small": 0}
    assert m["count"]["train"] + m["count"]["val"] == lsun.usable == 242
    splits = imagecache.load_splits(cache.path)
    assert not set(splits["train"]) & set(splits["val"])
    # the held-out split is a pure function of each key
    usable = [k for k in lsun.keys if k not in lsun.corrupt]
    assert sorted(splits["val"]) == [row_of(lsun, k) for k in usable if held_out(k, 0.2)]
    assert 0.1 < m["count"]["val"] / lsun.usable < 0.3
    for k in lsun.corrupt:  # skipped rows are zero and in no split
        r = row_of(lsun, k)
        assert not images[r].any() and r not in splits["train"] and r not in splits["val"]
    assert m["source"] == {"kind": "lmdb", "path": str(lsun.path.resolve())}
    assert {"numpy", "pillow", "lmdb", "python"} <= set(m["versions"])
    assert "centre crop 64x64" in m["preprocessing"]
    assert m["fingerprint"].startswith("cache-") and len(m["images"]["shards"]) == 4
    assert not (cache.path / prepare.WORKDIR).exists()
    imagecache.verify(cache.path, m)
    ds = load_dataset(str(cache.path))
    assert len(ds) == m["count"]["train"] and ds.fingerprint == m["fingerprint"]
    val = load_dataset(str(cache.path), split="val")
    assert len(val) == m["count"]["val"] and val.fingerprint != ds.fingerprint


def test_the_crop_and_rgb_conversion(lsun, cache):
    images = np.load(cache.path / imagecache.IMAGES, mmap_mode="r")
    p = images[row_of(lsun, PATTERN_KEY)]  # (3, 64, 64)
    # 256x128 -> 128x64, centre crop keeps columns 32..95: the green band lands on 30..33,
    # the red (left) and blue (right) quarters are cut away
    assert p[1, :, 30:34].min() > 200 and p[0, :, 30:34].max() < 60
    assert p[:, :, :26].max() < 40 and p[:, :, 38:].max() < 40
    gray = images[row_of(lsun, GRAY_KEY)]
    assert np.array_equal(gray[0], gray[1]) and np.array_equal(gray[1], gray[2])
    assert abs(int(gray.mean()) - 77) <= 2


def test_the_same_source_gives_the_same_bytes_with_any_worker_count(lsun, cache, tmp_path):
    again = prepare.prepare(
        lsun.path,
        tmp_path / "c",
        dataclasses.replace(LSUN_OPTS, workers=1),
    )
    assert again.manifest["fingerprint"] == cache.manifest["fingerprint"]
    for name in (imagecache.IMAGES, imagecache.SPLITS):
        assert (tmp_path / "c" / name).read_bytes() == (cache.path / name).read_bytes()
    # --limit takes the first N keys; the split of each kept key is unchanged
    lim = prepare.prepare(lsun.path, tmp_path / "l", dataclasses.replace(LSUN_OPTS, limit=50))
    assert lim.manifest["rows"] == 50
    full = np.load(cache.path / imagecache.IMAGES, mmap_mode="r")
    assert np.array_equal(np.load(tmp_path / "l" / imagecache.IMAGES), full[:50])
    val = imagecache.load_splits(cache.path)["val"]
    assert list(imagecache.load_splits(tmp_path / "l")["val"]) == [r for r in val if r < 50]


def test_a_folder_source_recursive_with_a_few_bad_files(tmp_path):
    root = make_folder(tmp_path / "imgs", [(64 + i % 7, 70 + i % 5) for i in range(150)], corrupt=1)
    (root / "sub" / "deeper").mkdir(parents=True)
    from PIL import Image

    Image.new("L", (100, 100), 200).save(root / "sub" / "deeper" / "gray.webp")
    (root / "notes.txt").write_text("ignored")
    done = prepare.prepare(root, tmp_path / "out", QUIET)
    m = done.manifest
    assert m["rows"] == 152 and m["skipped"] == {"unreadable": 1, "too-small": 0}
    assert m["count"] == {"train": 151, "val": 0} and m["source"]["kind"] == "folder"


def test_too_many_small_images_are_rejected_and_a_higher_threshold_resumes(tmp_path):
    src = make_lmdb(tmp_path / "lmdb", n=60, corrupt=0, small=6)  # 6 of 68 under 64 px
    code, _, err = run_main("prepare-data", "--source", str(src.path), "--out",
                            str(tmp_path / "out"), "--no-progress", "--workers", "1")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "6 of 68 images are unusable (0 unreadable, 6 under 64 px on the short side)" in err
    assert "--max-skipped" in err and not (tmp_path / "out" / imagecache.MANIFEST).exists()
    again = ["--no-progress", "--max-skipped", "0.1"]
    code, _, err = run_main("prepare-data", "--source", str(src.path), "--out",
                            str(tmp_path / "out"), *again)  # fmt: skip
    assert code == 0, err
    m = read_json(tmp_path / "out" / imagecache.MANIFEST)
    assert m["skipped"]["too-small"] == 6 and m["count"]["train"] == 62
    assert "resuming: 1 of 1 shards already prepared" in err


def test_sigkill_in_the_middle_resumes_to_identical_output(lsun, cache, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "reproduce", "prepare-data", "--source", str(lsun.path),
           "--out", str(out), *LSUN_ARGS, "--workers", "2", "--no-progress"]  # fmt: skip
    env = cli_env(REPRODUCE_FAULTS="prepare-sleep=0.02")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    shards = out / prepare.WORKDIR / "shards"
    try:
        wait_for(lambda: len(list(shards.glob("*.json"))) >= 1, proc, timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the main process and its workers
        proc.communicate()
    done_before = len(list(shards.glob("*.json")))
    assert 1 <= done_before < 4 and not (out / imagecache.MANIFEST).exists()
    r = subprocess.run(cmd, env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {done_before} of 4 shards already prepared" in r.stderr
    assert read_json(out / imagecache.MANIFEST)["fingerprint"] == cache.manifest["fingerprint"]
    for name in (imagecache.IMAGES, imagecache.SPLITS):
        assert (out / name).read_bytes() == (cache.path / name).read_bytes()
    # a third run is a no-op
    r = subprocess.run(cmd, env=cli_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "already prepared" in r.stdout


def test_training_on_the_cache_end_to_end_and_placement_is_bit_exact(cache, tmp_path):
    args = ["train", "--data", str(cache.path), "--dim", "8", "--batch-size", "8", "--iters",
            "3", "--threads", "1", "--no-progress", "--no-eval", "--sample-every", "0"]  # fmt: skip
    runs = {}
    for placement in ("device", "host"):
        results = tmp_path / placement
        r = run_cli(*args, "--results", str(results), "--data-placement", placement)
        assert r.returncode == 0 and "completed" in r.stdout, r.stderr
        (run,) = [p for p in results.iterdir() if (p / "config.json").exists()]
        runs[placement] = run
        cfg = read_json(run / "config.json")
        assert cfg["config"]["data_fingerprint"] == cache.manifest["fingerprint"]
        assert cfg["dataset"]["cache"] == str(cache.path.resolve())
    assert runs["device"].name == runs["host"].name  # placement is not result-affecting
    a, b = load_final_state(runs["device"]), load_final_state(runs["host"])
    for part in ("generator", "critic", "opt_g", "opt_d", "data", "rng"):
        assert_states_equal(a[part], b[part], part)


def test_host_and_device_batches_are_identical(cache):
    from reproduce.data.datasets import BatchSource

    ds = load_dataset(str(cache.path))
    cpu = torch.device("cpu")
    a = BatchSource(ds, 16, seed=4, device=cpu, placement="device")
    b = BatchSource(ds, 16, seed=4, device=cpu, placement="host")
    for _ in range(40):  # crosses epoch boundaries (about 195 training images)
        assert torch.equal(a.next(), b.next())


# --------------------------------------------------------------------------------------------
# bad inputs: one line, exit code 2, nothing written
# --------------------------------------------------------------------------------------------
def rejected(tmp_path: Path, *argv: str, match: str) -> str:
    before = tree(tmp_path)
    code, _, err = run_main("prepare-data", "--no-progress", *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert match in lines[0], err
    assert tree(tmp_path) == before
    return lines[0]


def test_bad_sources_and_options(tmp_path, lsun):
    out = str(tmp_path / "out")
    rejected(tmp_path, "--source", str(tmp_path / "nope"), "--out", out,
             match="--source: " + str(tmp_path / "nope") + " does not exist")  # fmt: skip
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    neither = "is neither an LMDB (a directory with data.mdb) nor a folder of images"
    rejected(tmp_path, "--source", str(tmp_path / "notes"), "--out", out, match=neither)
    (tmp_path / "f.bin").write_bytes(b"x")
    rejected(
        tmp_path, "--source", str(tmp_path / "f.bin"), "--out", out, match="is neither an LMDB"
    )
    import lmdb

    lmdb.open(str(tmp_path / "empty_lmdb"), map_size=1 << 20).close()
    rejected(tmp_path, "--source", str(tmp_path / "empty_lmdb"), "--out", out,
             match="the LMDB " + str(tmp_path / "empty_lmdb") + " is empty")  # fmt: skip
    (tmp_path / "bad_lmdb").mkdir()
    (tmp_path / "bad_lmdb" / "data.mdb").write_bytes(b"not an lmdb" * 100)
    rejected(tmp_path, "--source", str(tmp_path / "bad_lmdb"), "--out", out,
             match="is not a readable LMDB")  # fmt: skip
    src = str(lsun.path)
    rejected(tmp_path, "--source", src, "--out", out, "--limit", "0", match="--limit: must be")
    rejected(tmp_path, "--source", src, "--out", out, "--val-fraction", "1.5",
             match="--val-fraction: must be in [0, 1)")  # fmt: skip
    rejected(tmp_path, "--source", src, "--out", out, "--workers", "0", match="--workers:")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("x")
    busy = str(tmp_path / "busy")
    rejected(tmp_path, "--source", src, "--out", busy,
             match=f"--out: {busy} is not empty and not a cache")  # fmt: skip


def test_an_interrupted_preparation_with_other_options_is_refused(lsun, tmp_path):
    out = tmp_path / "out"
    (out / prepare.WORKDIR).mkdir(parents=True)
    plan = prepare._plan(prepare.Source.open(lsun.path), Options(val_fraction=0.1))
    (out / prepare.WORKDIR / "plan.json").write_text(json.dumps(plan))
    rejected(tmp_path, "--source", str(lsun.path), "--out", str(out), "--val-fraction", "0.2",
             match="holds an interrupted preparation of other options: val_fraction 0.1 "
             "(now 0.2)")  # fmt: skip
    code, _, err = run_main("train", "--data", str(out), "--results", str(tmp_path / "r"))
    assert code == 2 and "is an unfinished cache" in err and not (tmp_path / "r").exists()


def test_not_enough_disk_space_is_found_before_starting(lsun, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        line = rejected(tmp_path, "--source", str(lsun.path), "--out", str(mnt / "cache"),
                        match="--out: " + str(mnt))  # fmt: skip
        assert "bytes free; the cache of 245 images needs" in line
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_cache_that_does_not_match_its_manifest_is_refused(cache, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(cache.path, bad)
    arr = np.load(bad / imagecache.IMAGES, mmap_mode="r+")
    arr[100, 1, 2, 3] ^= 0xFF  # one flipped byte
    arr.flush()
    del arr
    code, _, err = run_main("train", "--data", str(bad), "--results", str(tmp_path / "r"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "does not match its manifest (rows 64..127 have sha256" in err
    assert "prepare it again" in err and not (tmp_path / "r").exists()
    size = (bad / imagecache.IMAGES).stat().st_size
    with open(bad / imagecache.IMAGES, "r+b") as f:
        f.truncate(size - 12288)
    code, _, err = run_main("train", "--data", str(bad), "--results", str(tmp_path / "r"))
    assert code == 2 and "does not match its manifest" in err


def tampered_copy(cache, tmp_path: Path) -> Path:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(cache.path, bad)
    imagecache.stamp_path(bad).unlink(missing_ok=True)
    return bad


def forge(bad: Path, **changes) -> dict:
    """Rewrite the manifest as a forger would (the copy's files stay as they are)."""
    m = read_json(bad / imagecache.MANIFEST)
    for key, value in changes.items():
        m = value(m) if callable(value) else {**m, key: value}
    (bad / imagecache.MANIFEST).write_text(json.dumps(m))
    return m


def shard_sha(bad: Path, shard: dict) -> str:
    import hashlib

    arr = np.load(bad / imagecache.IMAGES, mmap_mode="r")
    block = arr[shard["start"] : shard["start"] + shard["rows"]]
    return hashlib.sha256(np.ascontiguousarray(block).data).hexdigest()


def refused(bad: Path, tmp_path: Path, match: str) -> None:
    """Refused alike by train (--data) and prepare-data (--out), one line, exit 2, nothing
    written."""
    before = tree(tmp_path)
    code, _, err = run_main("train", "--data", str(bad), "--results", str(tmp_path / "r"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--data: the cache {bad} does not match its manifest" in err and match in err, err
    assert tree(tmp_path) == before


def test_changed_images_with_their_shard_hash_forged_change_nothing_silently(cache, tmp_path):
    """Issue 18.4: swapped bytes plus a forged shard hash but the old fingerprint trained
    under the original run id; the fingerprint is now recomputed from the shard hashes."""
    bad = tampered_copy(cache, tmp_path)
    arr = np.load(bad / imagecache.IMAGES, mmap_mode="r+")
    arr[[10, 11]] = arr[[11, 10]]  # two images swapped
    arr.flush()
    del arr

    def fix_hash(m):
        m["images"]["shards"][0]["sha256"] = shard_sha(bad, m["images"]["shards"][0])
        return m

    forge(bad, images=fix_hash)
    refused(bad, tmp_path, f"fingerprint {cache.manifest['fingerprint']} is not the one its")
    # prepare-data on the same --out says the same, instead of "already prepared"
    r = run_cli("prepare-data", "--source", str(cache.manifest["source"]["path"]), "--out",
                str(bad), "--workers", "1", *LSUN_ARGS)  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stdout + r.stderr
    assert f"--out: the cache {bad} does not match its manifest (fingerprint" in r.stderr
    assert "already prepared" not in r.stdout


@pytest.mark.parametrize(
    "forgery,match",
    [
        (lambda m: {**m, "images": {**m["images"], "shards": []}}, "it lists no shards"),
        (
            lambda m: {**m, "images": {**m["images"], "shards": m["images"]["shards"][1:]}},
            "do not cover rows 0..244 in order (at row 0)",
        ),
        (
            lambda m: {**m, "images": {**m["images"], "shards": m["images"]["shards"][:-1]}},
            "its shards cover 192 rows, the images have 245",
        ),
        (lambda m: {**m, "images": {**m["images"], "shards": "all"}}, "malformed field"),
        (lambda m: {k: v for k, v in m.items() if k != "count"}, "malformed field: 'count'"),
    ],
)
def test_a_manifest_must_account_for_every_row(cache, tmp_path, forgery, match):
    bad = tampered_copy(cache, tmp_path)
    forge(bad, images=forgery)
    refused(bad, tmp_path, match)


def test_split_indices_out_of_range_are_refused_not_clipped(cache, tmp_path):
    """A splits.npz with an index past the last row (its sha256 and the fingerprint forged to
    match) was clipped silently to the last row; now it is refused."""
    import hashlib
    import io

    bad = tampered_copy(cache, tmp_path)
    splits = imagecache.load_splits(bad)
    splits["train"] = np.append(splits["train"][:-1], 10_000)
    buf = io.BytesIO()
    np.savez(buf, **splits)
    (bad / imagecache.SPLITS).write_bytes(buf.getvalue())
    sha = hashlib.sha256(buf.getvalue()).hexdigest()

    def consistent(m):
        m["splits"]["sha256"] = sha
        m["fingerprint"] = imagecache.cache_fingerprint(m["images"]["shards"], sha)
        return m

    forge(bad, splits=consistent)
    refused(bad, tmp_path, "split 'train' has indices outside rows 0..244")


def test_full_verification_once_then_sampled_until_the_files_change(cache, tmp_path):
    bad = tampered_copy(cache, tmp_path)
    m = read_json(bad / imagecache.MANIFEST)
    assert imagecache.verify(bad, m) == "full" and imagecache.stamp_path(bad).is_file()
    assert imagecache.verify(bad, m) == "sampled"
    arr = np.load(bad / imagecache.IMAGES, mmap_mode="r+")
    arr[200, 0, 0, 0] ^= 1  # the file's mtime moves: the stamp no longer vouches for it
    arr.flush()
    del arr
    with pytest.raises(UserError, match=r"rows 192\.\.244 have sha256"):
        imagecache.verify(bad, m)
    assert not imagecache.stamp_path(bad).exists()


def test_an_edit_with_its_mtime_set_back_is_verified_in_full(cache, tmp_path):
    """L2 (issue 46): a row of images.npy edited and its mtime restored passed the sampled
    check 2 times of 3 (4 shards re-hashed). The stamp records ctime too, which an edit
    moves and no one can set back: the next use is a full verification, and refuses it."""
    import os

    bad = tampered_copy(cache, tmp_path)
    m = read_json(bad / imagecache.MANIFEST)
    assert imagecache.verify(bad, m) == "full"
    images = bad / imagecache.IMAGES
    st = os.stat(images)
    # the mtime set back alone (this small cache's shards are all in the sample, so the
    # mode says it: a full verification, where the stamp used to vouch for the file)
    os.utime(images, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert imagecache.verify(bad, m) == "full"
    assert imagecache.verify(bad, m) == "sampled"
    st = os.stat(images)
    arr = np.load(images, mmap_mode="r+")
    arr[200, 0, 0, 0] ^= 1
    arr.flush()
    del arr
    os.utime(images, ns=(st.st_atime_ns, st.st_mtime_ns))  # as the forger does
    assert os.stat(images).st_mtime_ns == st.st_mtime_ns
    with pytest.raises(UserError, match=r"rows 192\.\.244 have sha256"):
        imagecache.verify(bad, m)
    # where no stamp can be recorded (an unwritable cache directory; here a directory in the
    # stamp's place, since root may write anywhere), every use is a full verification
    ro = tampered_copy(cache, tmp_path / "ro")
    imagecache.stamp_path(ro).mkdir(parents=True)
    assert [imagecache.verify(ro, m) for _ in range(2)] == ["full", "full"]
