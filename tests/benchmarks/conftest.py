"""Speed benchmarks (pytest-benchmark). Not part of the default test run: every test here is
marked ``benchmark_suite``, which pyproject's addopts deselect. Run them with

    python -m pytest tests/benchmarks -m benchmark_suite -n 0
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.benchmark_suite)
