"""The examples in the insights modules' docstrings hold (``make test`` doctests only
``agents/learning``)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "agents.insights.windows",
    "agents.insights.rules",
    "agents.insights.optimizer",
    "agents.insights.jobs",
    "agents.insights.plots",
    "agents.insights.signals",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0
