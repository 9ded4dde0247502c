"""Fixtures of the model tests; the plain helpers are in tests/model/tiny.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models: two OpenMP threads only wait on each other (10x slower when the cores are busy). Modules
    ask for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
