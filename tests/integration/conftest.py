"""Fixtures of the integration tests: the two-host lab, torn down even when a test fails.

Each test gets two fresh namespaces joined by a veth pair; their files (configs, daemon
logs, captures) go to the test's tmp_path, which pytest keeps for the last runs.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest
from pilotif_lab import LabHost, host_pair


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[LabHost, LabHost]]:
    """Hosts A (198.18.0.1) and B (198.18.0.2) in their own namespaces."""
    with host_pair(tmp_path) as pair:
        yield pair


def pytest_configure(config: pytest.Config) -> None:
    """Register the `docker` marker: tests that run their own dockerd and build the image."""
    config.addinivalue_line(
        "markers", "docker: runs a private dockerd and builds the image (minutes; root)"
    )
