"""Fixtures shared by the fuzz suites: quiet logs and one event loop per module."""

from __future__ import annotations

import logging
from typing import Iterator

import pytest


@pytest.fixture(scope="module", autouse=True)
def quiet_logs() -> Iterator[None]:
    """Thousands of refused inputs are each logged by the code under test; formatting them
    would cost more than the decoding that is being tested."""
    logging.disable(logging.CRITICAL)
    yield
    logging.disable(logging.NOTSET)


