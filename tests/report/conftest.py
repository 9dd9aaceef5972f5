"""One intra-op thread for these tests: their tensors are small, and on a shared, loaded
machine two spinning OpenMP threads make them many times slower."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
