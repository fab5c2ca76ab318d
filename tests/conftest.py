"""Shared test settings: deterministic torch, hypothesis profiles, and small helpers."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(1)

# CI runs more examples; a local run stays quick. Neither has a deadline: speed is measured in
# benchmarks/, never by tests.
settings.register_profile(
    "ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

#: dtypes every loss must support, with the tolerance used when comparing against float64.
LOW_PRECISION = [torch.float32, torch.bfloat16]
REDUCTIONS = ["none", "mean", "sum"]


@pytest.fixture
def generator() -> torch.Generator:
    """A freshly seeded torch generator for each test."""
    return torch.Generator().manual_seed(0)


def assert_finite(*tensors: torch.Tensor | None) -> None:
    """Assert every given tensor (values or gradients) is finite."""
    for t in tensors:
        assert t is not None, "expected a tensor (a missing gradient?)"
        assert torch.isfinite(t.float()).all(), f"non-finite entries in {t}"
