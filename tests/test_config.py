"""Run ids and configs: deterministic, sensitive to what changes results and to nothing else."""

from __future__ import annotations

import dataclasses

from reproduce.config import OPTIONS, RunConfig, config_diff, resolve_run_config


def cfg(**kw) -> RunConfig:
    return resolve_run_config(kw, dataset="demo", data_fingerprint="demo-0123")


def test_run_id_is_deterministic_and_readable():
    a, b = cfg(), cfg()
    assert a == b and a.run_id == b.run_id
    assert a.run_id.startswith("baseline-wgan-gp-s0-") and len(a.hash()) == 10
    # giving a default explicitly is the same run
    assert cfg(lr=1e-4, beta1=0.5, n_critic=5, gp_lambda=10.0).run_id == a.run_id


def test_every_result_affecting_field_changes_the_id():
    base = cfg()
    for field in dataclasses.fields(RunConfig):
        value = getattr(base, field.name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, str):
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
