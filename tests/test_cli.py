"""The `workshop` command as an instructor uses it next to a running hub."""

from __future__ import annotations

import subprocess

import yaml

from harness import VENV_BIN, free_port


def workshop(*args, timeout=120):
    r = subprocess.run([str(VENV_BIN / "workshop"), *args], capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def config_on_a_free_port(hub, tmp_path):
    """The test hub's workshop.yaml, moved to a free port and a fresh state dir."""
    settings = yaml.safe_load(hub.config_path.read_text())
    settings["hub"]["port"] = free_port()
    settings["hub"]["state_dir"] = str(tmp_path / "state")
    other = tmp_path / "workshop.yaml"
    other.write_text(yaml.safe_dump(settings))
    return other


def test_status_shows_the_hub_and_each_attendee_server(hub):
    name, _, _ = hub.new_attendee("stat")
    hub.start_server(name)
    code, out = workshop("-c", str(hub.config_path), "status")
    assert code == 0, out
    assert f"up at {hub.url}" in out
    line = next(line for line in out.splitlines() if line.startswith(name))
    assert "ready" in line
    teacher = next(line for line in out.splitlines() if line.startswith("teacher"))
    assert "yes" in teacher  # admin column
    hub.stop_server(name)


def test_check_passes_on_a_ready_host_and_names_a_busy_port(hub, tmp_path):
    code, out = workshop("-c", str(hub.config_path), "check")
    assert code == 1, out
    assert "Docker engine reachable" in out
    assert "is built and up to date" in out
    assert f"port {hub.settings['hub']['port']} on 127.0.0.1 is in use" in out

    other = config_on_a_free_port(hub, tmp_path)
    code, out = workshop("-c", str(other), "check")
    assert code == 0, out
    assert "all checks passed" in out


def test_status_says_how_to_start_a_hub_that_is_not_running(tmp_path, hub):
    other = config_on_a_free_port(hub, tmp_path)
    code, out = workshop("-c", str(other), "status")
    assert code == 1
    assert "not answering" in out and "workshop up" in out
