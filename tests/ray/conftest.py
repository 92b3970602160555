"""A local Ray cluster for the Ray engine's tests: started once, two CPUs, shut down at the end.

The cluster's processes (GCS, raylet, workers) are children of this test process; the tests kill
only those (a worker, or a driver subprocess they started), by process id.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Ray binds a node to a remotely reachable address unless told this is a one-machine cluster;
# tests connect to loopback only. Read when ray is imported; inherited by driver subprocesses.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray")


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """The address of a 2-CPU local cluster bound to loopback (for drivers in subprocesses)."""
    context = ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    address = str(context.address_info["gcs_address"])
    assert address.startswith("127.0.0.1:"), address
    try:
        yield address
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_qwen_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL checkpoint, built once."""
    pytest.importorskip("torch")
    from traceguard.testing.tiny_qwen import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("ray-tiny-qwen"))
