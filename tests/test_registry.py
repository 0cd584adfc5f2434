"""The one registry type behind every name the command line chooses."""

from __future__ import annotations

import pytest

from architectures import ALL_PAIRS, PAIRS
from reproduce.cli import EXECUTORS
from reproduce.config.options import MODES
from reproduce.gan.procedures import PROCEDURES
from reproduce.matrix.cells import PROFILES
from reproduce.matrix.experiments import EXPERIMENTS
from reproduce.registry import Registry
from reproduce.reporting.figures import FIGURES


def test_a_registry_keeps_order_refuses_twice_and_names_the_closest():
    r: Registry[int] = Registry("colour")
    assert r.register("red", 1) == 1
    r.register("green", 2)
    assert list(r) == ["red", "green"] and dict(r) == {"red": 1, "green": 2} and len(r) == 2
    assert "red" in r and "blue" not in r and r.get("blue") is None
    with pytest.raises(ValueError, match="colour 'red' registered twice"):
        r.register("red", 3)
    with pytest.raises(KeyError) as e:
        r["gren"]
    assert e.value.args[0] == "unknown colour 'gren' (did you mean 'green'?); valid: red, green"
    assert r.unknown("xyz") == "unknown colour 'xyz'; valid: red, green"


@pytest.mark.parametrize(
    "registry,kind,names",
    [
        (PAIRS, "architecture", 7),
        (ALL_PAIRS, "architecture", 8),
        (PROCEDURES, "procedure", 4),
        (EXPERIMENTS, "experiment", 1),
        (FIGURES, "figure", 5),
        (PROFILES, "profile", 3),
        (EXECUTORS, "executor", 3),
        (MODES, "mode", 3),
    ],
)
def test_every_named_choice_is_a_registry(registry, kind, names):
    assert isinstance(registry, Registry) and registry.kind == kind
    assert len(registry) >= names
