"""Datasets and sampling: demo determinism, preprocessing of one image, (seed, epoch) purity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reproduce.data.datasets import (
    DEMO_MODES,
    DataPosition,
    EpochSampler,
    load_dataset,
    load_demo,
    make_demo_images,
)
from reproduce.data.prepare import preprocess


def test_demo_is_deterministic_and_has_distinct_modes(demo):
    assert demo.images.shape == (2048, 3, 64, 64) and demo.images.dtype == torch.uint8
    again = make_demo_images()
    assert torch.equal(demo.images, again)
    assert demo.fingerprint.startswith("demo-")
    # the modes are structurally distinct: e.g. horizontal stripes vary along y only, vertical
    # stripes along x only (the texture noise varies along both)
    m = len(DEMO_MODES)
    x = demo.images.float()
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    h, v = DEMO_MODES.index("hstripes"), DEMO_MODES.index("vstripes")
    assert (dy[h::m] > 2 * dx[h::m]).all() and (dx[v::m] > 2 * dy[v::m]).all()


def test_demo_images_are_the_original_generators_bit_for_bit(demo):
    """Adding the shapes style changed no demo image: every demo run id stays what it was."""
    assert demo.fingerprint == "demo-8954f847b618b595"
    assert load_demo("val").fingerprint == "demo-97ac72f99fd3d14a"


def test_shapes_has_the_demo_modes_with_less_nuisance(demo):
    shapes = load_dataset("shapes")
    assert shapes.kind == "shapes" and shapes.fingerprint.startswith("shapes-")
    assert shapes.images.shape == demo.images.shape
    assert torch.equal(shapes.images, make_demo_images(style="shapes"))  # deterministic
    x = shapes.images
    # white on black and no pixel noise: only the gradients have grey levels
    grey = ((x > 0) & (x < 255)).flatten(1).any(dim=1)
    g = DEMO_MODES.index("gradient")
    assert grey[g :: len(DEMO_MODES)].all()
    assert not grey[[i for i in range(len(x)) if i % len(DEMO_MODES) != g]].any()
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    # shapes near the centre: every disc's centre of mass within 6 px of the middle
    d = DEMO_MODES.index("disc")
    disc = x[d :: len(DEMO_MODES), 0].float()
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    mass = disc.sum(dim=(1, 2))
    cy, cx = (disc * ys).sum(dim=(1, 2)) / mass, (disc * xs).sum(dim=(1, 2)) / mass
    assert ((cy - 31.5).abs().max() < 6) and ((cx - 31.5).abs().max() < 6)
    assert load_dataset("shapes", "val").fingerprint != shapes.fingerprint


def test_preprocess_resizes_short_side_and_centre_crops(tmp_path):
    # 128x256 (w x h) image: left half red, right half blue, a green band in the middle rows
    img = np.zeros((256, 128, 3), np.uint8)
    img[:, :64] = (255, 0, 0)
    img[:, 64:] = (0, 0, 255)
    img[120:136] = (0, 255, 0)
    path = tmp_path / "t.png"
    Image.fromarray(img).save(path)
    out = preprocess(path)
    assert out.shape == (3, 64, 64) and out.dtype == np.uint8
    # resized to 64x128, centre crop keeps rows 32..95: the green band (rows 60..67) is centred
    assert out[1, 30:34, 10].min() > 200 and out[1, 10, 10] < 30
    assert out[0, 10, 5] > 200 and out[2, 10, 60] > 200  # red left, blue right


def test_grayscale_rgba_and_palette_become_rgb(tmp_path):
    for mode in ("L", "RGBA", "P", "LA"):
        im = Image.new(mode, (80, 64))
        fmt = "png"
        im.save(tmp_path / f"{mode}.{fmt}")
        assert preprocess(tmp_path / f"{mode}.{fmt}").shape == (3, 64, 64)


def test_sampler_order_is_a_pure_function_of_seed_and_epoch():
    s = EpochSampler(10, 3, seed=5)
    batches = [s.next_indices().tolist() for _ in range(7)]
    # three batches per epoch (the last incomplete one dropped), no repeats within an epoch
    for e in range(2):
        epoch = [i for b in batches[3 * e : 3 * e + 3] for i in b]
        assert len(set(epoch)) == 9
    assert s.position == DataPosition(epoch=2, offset=3)
    # resuming at any position gives the same continuation
    r = EpochSampler(10, 3, seed=5, position=DataPosition(epoch=1, offset=3))
    assert [r.next_indices().tolist() for _ in range(3)] == batches[4:7]
    assert batches[:3] != [EpochSampler(10, 3, seed=6).next_indices().tolist() for _ in range(3)]


def test_batch_larger_than_dataset_is_refused():
    with pytest.raises(ValueError):
        EpochSampler(4, 8, seed=0)
