"""Run ids and configs: deterministic, sensitive to what changes results and to nothing else."""

from __future__ import annotations

import dataclasses

import pytest

from reproduce.config.options import OPTIONS
from reproduce.config.run import RunConfig, config_diff, resolve_run_config, upgrade_config
from reproduce.errors import UserError


def cfg(**kw) -> RunConfig:
    return resolve_run_config(kw, dataset="demo", data_fingerprint="demo-0123")


def test_run_id_is_deterministic_and_readable():
    a, b = cfg(), cfg()
    assert a == b and a.run_id == b.run_id
    assert a.run_id.startswith("baseline-wgan-gp-s0-") and len(a.hash()) == 10
    # giving a default explicitly is the same run
    assert cfg(lr=1e-4, beta1=0.5, n_critic=5, gp_lambda=10.0).run_id == a.run_id


@pytest.mark.parametrize("arch", ["baseline", "mlp-generator"])
def test_every_result_affecting_field_changes_the_id(arch):
    base = cfg(arch=arch)
    for field in dataclasses.fields(RunConfig):
        value = getattr(base, field.name)
        if isinstance(value, bool) or value is None:
            continue
        if field.name == "mlp_width":
            other = "fixed-512"
        elif isinstance(value, str):
            other = value + "x"
        elif isinstance(value, float):
            other = value * 2
        else:
            other = value + 4
        changed = dataclasses.replace(base, **{field.name: other})
        assert changed.hash() != base.hash(), field.name


def test_runtime_options_are_not_part_of_the_config():
    run_keys = {f.name for f in dataclasses.fields(RunConfig)}
    for opt in OPTIONS:
        assert (opt.section == "run") == (opt.key in run_keys), opt.key


def test_official_code_set_differs_only_in_beta1():
    paper, official = cfg(), cfg(hparams="official-code")
    diff = config_diff(paper.to_dict(), official.to_dict())
    assert diff == ["beta1: 0.5 -> 0.0", "hparams: 'paper' -> 'official-code'"]
    assert paper.run_id != official.run_id


# Run ids computed by the code before TF1's Adam became the default (commit 8eb24e6), for
# data fingerprint 0123456789abcdef; PyTorch's Adam was then spelled "adam".
OLD_IDS = {
    (("procedure", "dcgan"),): "baseline-dcgan-s0-8306f57961",
    (("procedure", "wgan-gp"), ("hparams", "official-code")): "baseline-wgan-gp-s0-43965e87e5",
    (("arch", "mlp-generator"), ("procedure", "lsgan"), ("dim", 16)):
        "mlp-generator-lsgan-s0-30951265ed",
    (("arch", "mlp-generator"), ("procedure", "wgan-gp"), ("optimizer", "adam-tf")):
        "mlp-generator-wgan-gp-s0-c99596f118",
}  # fmt: skip


def _resolved(**kw) -> RunConfig:
    return resolve_run_config(kw, dataset="demo", data_fingerprint="0123456789abcdef")


def test_ids_change_where_the_maths_changed_and_nowhere_else():
    """TF1's Adam is the new default of dcgan and wgan-gp (SPEC.md B.4): their default ids
    change. PyTorch's Adam, now adam-torch, and the MLP width that was the only one (scaled)
    keep the ids they had, so old run directories resume under the new code."""
    for choices, old in OLD_IDS.items():
        new = _resolved(**dict(choices))
        if new.procedure in ("dcgan", "wgan-gp") and "optimizer" not in dict(choices):
            assert new.optimizer == "adam-tf" and new.run_id != old
            assert _resolved(**dict(choices), optimizer="adam-torch").run_id == old
        else:
            assert new.run_id == old
    mlp = _resolved(arch="mlp-generator", procedure="lsgan", dim=16)
    assert mlp.mlp_width == "scaled" and mlp.to_dict()["mlp_width"] == "scaled"  # recorded
    wide = _resolved(arch="mlp-generator", procedure="lsgan", dim=16, mlp_width="fixed-512")
    assert wide.run_id != mlp.run_id and "mlp_width" not in cfg().to_dict()


def test_old_configs_read_in_todays_spelling():
    old = {**cfg(procedure="dcgan", optimizer="adam-torch").to_dict(), "optimizer": "adam"}
    assert RunConfig.from_dict(old) == cfg(procedure="dcgan", optimizer="adam-torch")
    old_mlp = cfg(arch="mlp-generator").to_dict()
    del old_mlp["mlp_width"]
    assert upgrade_config(old_mlp) == cfg(arch="mlp-generator").to_dict()
    assert RunConfig.from_dict(old_mlp).mlp_width == "scaled"


def test_mlp_width_builds_the_named_width_and_only_for_the_mlp():
    from architectures import get_pair

    pair = get_pair("mlp-generator")
    for choice, width in (("scaled", 128), ("fixed-512", 512)):
        first = pair.generator(16, "tf-same", choice).net[0]
        assert first.out_features == width, choice
    assert pair.generator(64, "tf-same", "scaled").net[0].out_features == 512  # the paper's
    with pytest.raises(UserError, match="--mlp-width means nothing for architecture baseline"):
        cfg(arch="baseline", mlp_width="fixed-512")
    with pytest.raises(ValueError):
        get_pair("baseline").generator(16, "tf-same", "scaled")


def test_runtime_options_are_the_fields_of_runtime_config():
    """Declared once: every RuntimeConfig field a user sets is an option with the field's own
    default, type and bounds (the checksum of the weights is set by the code, not an option)."""
    from reproduce.config.options import OPTIONS_BY_KEY
    from reproduce.config.runtime import RuntimeConfig

    defaults = RuntimeConfig()
    runtime = {o.key: o for o in OPTIONS if o.section == "runtime"}
    settable = [f.name for f in dataclasses.fields(RuntimeConfig) if f.name != "inception_sha256"]
    assert list(runtime) == settable
    for key, opt in runtime.items():
        assert opt.default == getattr(defaults, key), key
    assert OPTIONS_BY_KEY["threads"].type is int and OPTIONS_BY_KEY["eval"].type is bool
    assert (OPTIONS_BY_KEY["reference_samples"].minimum, OPTIONS_BY_KEY["threads"].maximum) == (
        20, 1024)  # fmt: skip


def test_the_procedures_defaults_in_the_help_come_from_the_procedures():
    from reproduce.config.options import OPTIONS_BY_KEY, procedure_defaults
    from reproduce.gan.procedures import PROCEDURES

    assert procedure_defaults("lr") == "dcgan 2e-4, lsgan 1e-4, wgan 5e-5, wgan-gp 1e-4"
    assert procedure_defaults("beta1") == "dcgan 0.5, wgan-gp 0.5 paper / 0 official-code"
    assert procedure_defaults("clip") == "wgan 0.01"
    for key in ("optimizer", "lr", "beta1", "beta2", "n_critic", "gp_lambda", "clip"):
        assert procedure_defaults(key) in OPTIONS_BY_KEY[key].help, key
        for name, proc in PROCEDURES.items():
            if getattr(proc.defaults["paper"], key) is not None:
                assert name in procedure_defaults(key), (key, name)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"reference_samples": 10}, "--reference-samples: must be at least 20, got 10"),
        ({"checkpoint_every": -1.0}, "--checkpoint-every: must be >= 0, got -1.0"),
        ({"is_threshold": 0.0}, "--is-threshold: must be positive, got 0.0"),
        ({"lr": 0.0}, "--lr: must be positive, got 0.0"),
        ({"seed": -1}, "--seed: must be >= 0, got -1"),
    ],
)
def test_an_option_out_of_bounds_is_refused_with_its_keys(values, message):
    """The bounds of every option are checked with its type, wherever the value comes from
    (a --config file here)."""
    from reproduce.config.options import check_keys

    with pytest.raises(UserError) as e:
        check_keys(values, "--config f.toml")
    assert str(e.value) == message
