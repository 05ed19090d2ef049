"""Fixtures for the data tests (helpers live in data_fixtures.py)."""

import pytest
from data_fixtures import make_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()
