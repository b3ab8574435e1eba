"""Fixtures for the training tests."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from training_data import squares


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return squares(32)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: the test machine's cores are shared, and oversubscribed OpenMP threads
    make the training tests many times slower. Restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
