"""Fixtures shared across the test folders."""

import pytest
import torch

from synclearn.data import chat_pairs


@pytest.fixture
def one_thread():
    """One intra-op thread: the models under test are tiny, so one thread is faster on a shared
    2-core machine (no oversubscription) and keeps runs bitwise reproducible. Use it in a module
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def examples():
    """Six chat (prompt, response) examples from the built-in generator."""
    return chat_pairs(6, seed=1)
