"""Shared fixtures of the test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.datasets import generate


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A data root holding the ``tiny`` synthetic preset (``test/synth-tiny``, ``train/synth-tiny``),
    rendered once per test run. Treat it as read-only: write other files elsewhere, and copy it
    before changing it."""
    root = tmp_path_factory.mktemp("tiny_data")
    generate("tiny", root, progress=False)
    return root
