"""The seven pairs against SPEC.md A: parameter counts, norms, padding, initialisers, layers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from architectures import ALL_PAIRS, PAIRS, get_pair
from architectures.dcgan import DCGAN_STD
from architectures.layers import (
    Conv2d,
    Deconv2d,
    Linear,
    conv_std,
    deconv_std,
    depth_to_space_tf,
    gated,
    linear_std,
    mirror,
    mirror_layers,
)

# SPEC.md A.8 (DIM 64): (generator, critic) parameters, biases and gamma/beta included
SPEC_COUNTS = {
    "baseline": (5_364_739, 4_316_545),
    "constant-filters": (444_291, 4_316_545),
    "mlp-generator": (7_157_760, 4_316_545),
    "no-norm": (5_362_819, 4_314_753),
    "gated": (10_724_675, 8_624_897),
    "tanh": (5_364_739, 4_316_545),
    "resnet101": (9_189_587, 7_618_801),
}
PAPER_ROWS = {
    1: "Baseline (G: DCGAN, D: DCGAN)",
    2: "G: No BN and a constant number of filters, D: DCGAN",
    3: "G: 4-layer 512-dim ReLU MLP, D: DCGAN",
    4: "No normalization in either G or D",
    5: "Gated multiplicative nonlinearities everywhere in G and D",
    6: "tanh nonlinearities everywhere in G and D",
    7: "101-layer ResNet G and D",
}


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def critic_norms(name: str) -> list[str]:
    return ["batch", "layer"] if PAIRS[name].critic_has_norm else ["none"]


def test_registry_is_the_seven_rows_of_figure_2():
    assert sorted(p.row for p in PAIRS.values()) == list(range(1, 8))
    assert {p.row: p.title for p in PAIRS.values()} == PAPER_ROWS
    assert set(PAIRS) == set(SPEC_COUNTS)


def test_unknown_architecture_suggests_closest():
    with pytest.raises(KeyError, match=r"did you mean 'baseline'.*valid: baseline"):
        get_pair("basline")


@pytest.mark.parametrize("name", list(SPEC_COUNTS))
def test_parameter_counts_match_spec(name):
    g_expected, d_expected = SPEC_COUNTS[name]
    pair = PAIRS[name]
    with torch.device("meta"):
        assert n_params(pair.generator(64)) == g_expected
        for norm in critic_norms(name):
            assert n_params(pair.critic(64, norm)) == d_expected, norm


@pytest.mark.parametrize("name", list(SPEC_COUNTS))
def test_layer_norm_critics_contain_no_batch_norm(name):
    pair = PAIRS[name]
    with torch.device("meta"):
        if pair.critic_has_norm:
            ln = pair.critic(64, "layer")
            assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in ln.modules())
            gns = [m for m in ln.modules() if isinstance(m, nn.GroupNorm)]
            assert gns and all(m.num_groups == 1 and m.eps == 1e-5 for m in gns)
            bn = pair.critic(64, "batch")
            assert not any(isinstance(m, nn.GroupNorm) for m in bn.modules())
        else:
            d = pair.critic(64, "none")
            assert not any(
                isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) for m in d.modules()
            )
            with pytest.raises(ValueError, match="no critic normalisation"):
                pair.critic(64, "layer")
        # generators keep batch norm (or none) under every procedure
        g = pair.generator(64)
        assert not any(isinstance(m, nn.GroupNorm) for m in g.modules())


def test_batch_norm_always_uses_batch_statistics():
    for pair in PAIRS.values():
        with torch.device("meta"):
            mods = [*pair.generator(8).modules()]
            if pair.critic_has_norm:
                mods += [*pair.critic(8, "batch").modules()]
        for m in mods:
            if isinstance(m, nn.BatchNorm2d):
                assert not m.track_running_stats and m.running_mean is None and m.eps == 1e-5


def test_sampling_in_eval_mode_still_uses_batch_statistics():
    torch.manual_seed(0)
    g = get_pair("baseline").generator(8)
    z = torch.randn(16, 128)
    train_out = g.train()(z)
    eval_out = g.eval()(z)
    assert torch.equal(train_out, eval_out)


@pytest.mark.parametrize("name", list(SPEC_COUNTS))
def test_shapes_and_ranges(name):
    torch.manual_seed(0)
    pair = PAIRS[name]
    g = pair.generator(8)
    x = g(torch.randn(3, 128))
    assert x.shape == (3, 3, 64, 64)
    assert x.abs().max() <= 1
    for norm in critic_norms(name):
        y = pair.critic(8, norm)(x)
        assert y.shape == (3,)


def test_resnet_has_101_layers():
    from architectures.resnet101 import BottleneckBlock

    with torch.device("meta"):
        for net in (get_pair("resnet101").generator(64), get_pair("resnet101").critic(64, "layer")):
            blocks = [m for m in net.modules() if isinstance(m, BottleneckBlock)]
            branch_convs = [
                m
                for b in blocks
                for m in b.branch.modules()
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
            ]
            # 33 blocks x 3 branch convs + input layer + output layer (shortcuts not counted)
            assert len(blocks) == 33 and len(branch_convs) == 99
            assert isinstance(net.input, (nn.Linear, nn.Conv2d))
            assert isinstance(net.output, (nn.Linear, nn.Conv2d))


# --- TF "SAME" padding -------------------------------------------------------------------------
def tf_same_conv_reference(x, weight, bias, stride):
    """TF SAME by definition: pad total = max((ceil(H/s)-1)*s + k - H, 0), extra at the end."""
    k = weight.shape[-1]
    h = x.shape[-1]
    out = math.ceil(h / stride)
    total = max((out - 1) * stride + k - h, 0)
    before = total // 2
    return F.conv2d(
        F.pad(x, (before, total - before, before, total - before)), weight, bias, stride
    )


@pytest.mark.parametrize("k,stride", [(5, 2), (3, 2), (1, 2), (3, 1), (5, 1), (1, 1)])
def test_conv_matches_tf_same(k, stride):
    torch.manual_seed(0)
    conv = Conv2d(3, 4, k, stride)
    x = torch.randn(2, 3, 16, 16)
    ref = tf_same_conv_reference(x, conv.weight, conv.bias, stride)
    assert torch.allclose(conv(x), ref, atol=1e-6)
    if k == 5 and stride == 2:
        # the extra pixel is at the bottom/right: PyTorch's symmetric p=2 differs
        sym = F.conv2d(x, conv.weight, conv.bias, stride, padding=2)
        assert not torch.allclose(conv(x), sym, atol=1e-3)


@pytest.mark.parametrize("k", [5, 3])
def test_deconv_is_the_adjoint_of_the_tf_same_conv(k):
    """<deconv(y), x> == <y, conv(x)> for the SAME stride-2 conv with the same weights."""
    torch.manual_seed(0)
    de = Deconv2d(4, 3, k)
    nn.init.zeros_(de.bias)
    y = torch.randn(2, 4, 8, 8)
    x = torch.randn(2, 3, 16, 16)
    out = de(y)
    assert out.shape == (2, 3, 16, 16)
    conv_x = tf_same_conv_reference(x, de.weight, None, 2)  # (2, 4, 8, 8)
    assert torch.allclose((out * x).sum(), (y * conv_x).sum(), rtol=1e-5)
    # the spec's explicit crops: k5 keeps [1:1+2H], k3 keeps [0:2H] (computed without the
    # crop, so in another summation order: to float32 rounding)
    full = F.conv_transpose2d(y, de.weight, None, 2)
    start = 1 if k == 5 else 0
    torch.testing.assert_close(out, full[:, :, start : start + 16, start : start + 16],
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def tf_same_deconv_reference(y, weight, bias):
    """The adjoint of the SAME stride-2 conv, by definition: the full transposed convolution
    (size 2H + k - 2) cropped at the forward convolution's padding before the input."""
    k, h = weight.shape[-1], 2 * y.shape[-1]
    before = max((h // 2 - 1) * 2 + k - h, 0) // 2
    return F.conv_transpose2d(y, weight, bias, 2)[:, :, before : before + h, before : before + h]


def _penalty_pass(layer_fn, x, weight, bias):
    """A layer's output, and the weight, bias and input gradients of a WGAN-GP-style penalty
    on it (the input gradient's squared norm), i.e. through its double backward."""
    x, weight, bias = (t.detach().clone().requires_grad_(True) for t in (x, weight, bias))
    out = layer_fn(x, weight, bias)
    (gx,) = torch.autograd.grad((out * out.tanh()).sum(), x, create_graph=True)
    (gx * gx).sum().backward()
    return [out.detach(), weight.grad, bias.grad, x.grad]


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


LAYERS = {"conv5s2": (5, 2), "conv3s2": (3, 2), "conv1s2": (1, 2), "conv3s1": (3, 1),
          "conv5s1": (5, 1), "deconv5": (5, 0), "deconv3": (3, 0)}  # fmt: skip


@pytest.mark.parametrize("frame", ["plain", "mirrored"])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_tf_same_layers_match_a_direct_pad_and_crop_reference(layer, frame):
    """Forward and the penalty's double backward of each TF-SAME layer against the definition
    (F.pad + conv2d; the full transposed convolution, cropped) on random inputs.

    Plain: a layer on its own computes exactly the definition (tolerance 0 where it issues the
    same ops: the stride-2 layers). Mirrored (as inside the networks, ``mirror_layers``):
    ``mirror(layer(mirror(x)))`` with the mirrored kernel and symmetric padding, the same
    products summed in the backend's order for that form: float32 rounding, 1e-5 relative to
    each tensor's largest entry (measured: at most 4e-7)."""
    torch.manual_seed(0)
    k, stride = LAYERS[layer]
    if stride:
        mod: nn.Module = Conv2d(6, 8, k, stride)
        x = torch.randn(3, 6, 16, 16)

        def ref(x, w, b):
            return tf_same_conv_reference(x, w, b, stride)
    else:
        mod = Deconv2d(8, 6, k)
        x = torch.randn(3, 8, 8, 8)
        ref = tf_same_deconv_reference
    nn.init.normal_(mod.bias)  # nonzero, so that the bias path is checked too
    if frame == "mirrored":
        assert mirror_layers(mod, "tf-same") and mod.mirrored

    def ours(x, w, b):
        if frame == "mirrored":
            return mirror(torch.func.functional_call(mod, {"weight": w, "bias": b}, (mirror(x),)))
        return torch.func.functional_call(mod, {"weight": w, "bias": b}, (x,))

    got = _penalty_pass(ours, x, mod.weight, mod.bias)
    want = _penalty_pass(ref, x, mod.weight, mod.bias)
    for name, a, b in zip(("output", "weight grad", "bias grad", "input grad"), got, want,
                          strict=True):  # fmt: skip
        assert a.shape == b.shape, name
        if frame == "plain" and stride != 1:
            assert torch.equal(a, b), name
        else:
            assert _relative_error(a, b) <= 1e-5, (name, _relative_error(a, b))


def _unmirrored(net: nn.Module) -> nn.Module:
    """A copy of ``net`` that computes TF-SAME with explicit pads and crops."""
    plain = copy.deepcopy(net)
    for m in plain.modules():
        if hasattr(m, "mirrored"):
            m.mirrored = False
    return plain


@pytest.mark.parametrize("name", list(ALL_PAIRS))
def test_every_network_computes_tf_same_in_the_mirrored_frame(name):
    """Each TF-SAME network as built (mirrored) against the same network with explicit pads
    and crops: the generator's output, the penalty, and every parameter gradient of a WGAN-GP
    step (the critic's through the penalty's double backward). In float64, so that the check
    is of the maths (measured: at most 1e-14 relative); in float32 the two differ by rounding
    only, which a randomly initialised ResNet-101 critic amplifies to 2e-2 of its largest
    gradient (the same network agrees to 1e-14 in float64)."""
    pair = ALL_PAIRS[name]
    r = pair.resolution
    torch.manual_seed(0)
    G = pair.generator(8, "tf-same").double()
    D = pair.critic(8, "layer" if pair.critic_has_norm else "none", "tf-same").double()
    assert D.mirrored and getattr(G, "mirrored", name == "mlp-generator")
    z = torch.randn(4, 128, dtype=torch.float64)
    real = torch.rand(4, 3, r, r, dtype=torch.float64) * 2 - 1

    def step(G, D):
        fake = G(z)
        x = (0.3 * real + 0.7 * fake.detach()).requires_grad_(True)
        (gx,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
        penalty = ((gx.flatten(1).norm(dim=1) - 1) ** 2).mean()
        (D(fake).mean() - D(real).mean() + penalty).backward()
        grads = [p.grad for p in (*G.parameters(), *D.parameters())]
        return fake.detach(), penalty.detach(), grads

    (fake, penalty, grads), (fake0, penalty0, grads0) = step(G, D), step(*map(_unmirrored, (G, D)))
    assert _relative_error(fake, fake0) <= 1e-12
    assert _relative_error(penalty, penalty0) <= 1e-12
    scale = max(g.abs().max() for g in grads0)  # some are 0 in exact arithmetic (biases before BN)
    assert (
        max(((a - b).abs().max() / scale).item() for a, b in zip(grads, grads0, strict=True))
        <= 1e-12
    )


def test_symmetric_padding_option():
    torch.manual_seed(0)
    conv = Conv2d(3, 4, 5, 2, padding="symmetric")
    x = torch.randn(1, 3, 16, 16)
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight, conv.bias, 2, padding=2))
    de = Deconv2d(4, 3, 5, padding="symmetric")
    y = torch.randn(1, 4, 8, 8)
    ref = F.conv_transpose2d(y, de.weight, de.bias, 2, padding=2, output_padding=1)
    assert torch.allclose(de(y), ref)
    g = get_pair("baseline").generator(8, "symmetric")
    assert g(torch.randn(2, 128)).shape == (2, 3, 64, 64)


# --- tflib initialisers (SPEC.md A.0) -------------------------------------------------------
def assert_uniform_with_std(w: torch.Tensor, std: float) -> None:
    bound = math.sqrt(3) * std
    assert w.abs().max() <= bound + 1e-7
    assert w.abs().max() >= 0.97 * bound  # uniform, not a normal clipped at the bound
    assert abs(w.std().item() - std) < 0.05 * std


def test_initialiser_bounds():
    torch.manual_seed(0)
    lin = Linear(128, 8192)
    assert_uniform_with_std(lin.weight, math.sqrt(2 / (128 + 8192)))
    assert torch.equal(lin.bias, torch.zeros_like(lin.bias))
    he = Linear(512, 512, init="he")
    assert_uniform_with_std(he.weight, math.sqrt(2 / 512))
    conv = Conv2d(64, 128, 5, 2)
    assert_uniform_with_std(conv.weight, math.sqrt(4 / (64 * 25 + 128 * 25 / 4)))
    conv_g = Conv2d(64, 128, 1, 2, he_init=False)
    assert_uniform_with_std(conv_g.weight, math.sqrt(2 / (64 + 128 / 4)))
    de = Deconv2d(128, 64, 5)
    assert_uniform_with_std(de.weight, math.sqrt(4 / (128 * 25 / 4 + 64 * 25)))
    assert conv_std(64, 128, 5, 2, True) == math.sqrt(4 / (64 * 25 + 128 * 25 / 4))
    assert deconv_std(128, 64, 5, False) == math.sqrt(2 / (128 * 25 / 4 + 64 * 25))
    assert linear_std(128, 8192, "glorot") == math.sqrt(2 / (128 + 8192))


def test_dcgan_nets_use_the_uniform_002_override():
    torch.manual_seed(0)
    bound = math.sqrt(3) * DCGAN_STD  # 0.034641
    assert abs(bound - 0.03464) < 1e-5
    for name in ("baseline", "no-norm", "tanh", "constant-filters", "mlp-generator"):
        pair = get_pair(name)
        nets = [pair.critic(64, critic_norms(name)[0])]
        if name in ("baseline", "no-norm", "tanh"):
            nets.append(pair.generator(64))
        for net in nets:
            for m in net.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                    assert m.weight.abs().max() <= bound + 1e-7
                    assert m.weight.abs().max() > 0.97 * bound
                    assert torch.all(m.bias == 0)
    # rows 2 and 3 generators and rows 5 and 7 use the default tflib init (no override)
    g2 = get_pair("constant-filters").generator(64)
    assert_uniform_with_std(g2.input.weight, math.sqrt(2 / (128 + 1024)))
    g5 = get_pair("gated").generator(64)
    assert_uniform_with_std(g5.input.weight, math.sqrt(2 / (128 + 16384)))


def test_norm_affine_parameters_start_at_identity():
    d = get_pair("baseline").critic(8, "layer")
    for m in d.modules():
        if isinstance(m, nn.GroupNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


# --- special layers ----------------------------------------------------------------------------
def test_gate_uses_interleaved_channels():
    x = torch.arange(8, dtype=torch.float32).view(1, 8, 1, 1)
    expected = torch.sigmoid(x[:, [0, 2, 4, 6]]) * torch.tanh(x[:, [1, 3, 5, 7]])
    assert torch.equal(gated(x), expected)


def test_layer_norm_is_per_sample_over_chw_with_per_channel_affine():
    torch.manual_seed(0)
    gn = nn.GroupNorm(1, 4, eps=1e-5)
    nn.init.uniform_(gn.weight)
    nn.init.uniform_(gn.bias)
    x = torch.randn(3, 4, 5, 5)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    ref = (x - mean) / torch.sqrt(var + 1e-5) * gn.weight.view(1, 4, 1, 1) + gn.bias.view(
        1, 4, 1, 1
    )
    assert torch.allclose(gn(x), ref, atol=1e-5)


def test_depth_to_space_follows_tf_order():
    # TF: out[h*2+i, w*2+j, c] = in[h, w, (i*2+j)*C + c]
    c = 3
    x = torch.randn(1, 4 * c, 2, 2)
    out = depth_to_space_tf(x)
    for i in range(2):
        for j in range(2):
            for ch in range(c):
                assert torch.equal(out[0, ch, i::2, j::2], x[0, (i * 2 + j) * c + ch])


def test_resnet_residual_scale_and_output_scaling():
    from architectures.resnet101 import OUTPUT_SCALE, RESIDUAL_SCALE, BottleneckBlock

    assert RESIDUAL_SCALE == 0.3 and OUTPUT_SCALE == 5.0
    torch.manual_seed(0)
    block = BottleneckBlock(8, 8, "none", norm="layer", padding="tf-same")
    x = torch.randn(2, 8, 4, 4)
    assert torch.allclose(block(x), x + 0.3 * block.branch(x))
    conv2 = block.branch[5]
    assert isinstance(conv2, nn.Conv2d) and conv2.bias is None  # Conv2 has no bias
    d = get_pair("resnet101").critic(8, "layer")
    img = torch.randn(2, 3, 64, 64)
    assert d.mirrored  # its blocks compute in the mirrored frame (TF-SAME; see layers.py)
    feats = mirror(d.blocks(d.input(mirror(img)))).flatten(1)
    assert torch.allclose(d(img), d.output(feats).view(-1) / 5)
