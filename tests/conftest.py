"""Fixtures that run the real thing: `workshop up` (JupyterHub + configurable-http-proxy)
against the real Docker engine, with attendee containers from the real image."""

from __future__ import annotations

import docker
import pytest

from harness import ARTIFACTS, IMAGE, remove_user_objects, start_hub


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:
        pytest.fail(f"Docker engine not reachable ({e}); ./run-tests starts it when run as root")
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"attendee image {IMAGE} is not built; run `workshop build-image` (./run-tests does)")
    return client


@pytest.fixture(scope="session")
def hub(tmp_path_factory, docker_client):
    """One real hub for the session, torn down with every container and volume it made."""
    h = start_hub(tmp_path_factory.mktemp("hub"))
    yield h
    h.stop()
    ARTIFACTS.mkdir(exist_ok=True)
    if h.log_path and h.log_path.exists():
        (ARTIFACTS / "hub.log").write_bytes(h.log_path.read_bytes())
    remove_user_objects(docker_client, h.created_users)
