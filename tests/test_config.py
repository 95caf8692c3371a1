"""workshop.yaml: what an instructor sees when they get it wrong, and the hub settings it becomes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from traitlets.config import Config

from workshop import config, hubconfig
from workshop.state import HubState

REPO = Path(__file__).resolve().parent.parent
HOST = config.HostFacts(cpus=8, memory=16 * config.GiB)


def problems(data, host=HOST):
    with pytest.raises(config.ConfigError) as e:
        config.from_dict(data, host=host)
    return "\n".join(e.value.problems)


def test_the_shipped_example_is_valid_and_matches_the_schema_defaults():
    cfg = config.load(REPO / "workshop.example.yaml", host=HOST)
    assert cfg == config.from_dict({}, base_dir=REPO, host=HOST)
    assert cfg.limits.memory == 2 * config.GiB
    assert cfg.hub.state_dir == REPO / "state"


@pytest.mark.parametrize("text,bytes_", [("2G", 2 * config.GiB), ("512M", 512 * config.MiB),
                                          ("1.5G", int(1.5 * config.GiB)), (1073741824, config.GiB)])
def test_sizes_are_read_like_docker_writes_them(text, bytes_):
    assert config.parse_size(text) == bytes_


def test_a_size_with_a_B_suffix_is_refused_with_the_fix():
    msg = problems({"limits": {"memory": "2GB"}})
    assert "limits.memory" in msg and "'2GB'" in msg and "2G or 512M" in msg


def test_an_unknown_key_is_named_with_the_allowed_ones():
    msg = problems({"limits": {"cpus": 2}})
    assert "limits" in msg and "'cpus'" in msg and "cpu, memory, pids" in msg


def test_limits_bigger_than_the_host_are_refused():
    msg = problems({"limits": {"cpu": 16, "memory": "64G"}})
    assert "limits.cpu: 16 is more than this host's 8 cores" in msg
    assert "limits.memory: '64G' is more than this host's 16G" in msg


def test_wrong_types_and_ranges_name_the_key_and_value():
    msg = problems({"hub": {"port": "eighty", "concurrent_spawn_limit": 0}, "instructors": ["Dr Who"]})
    assert "hub.port: 'eighty'" in msg
    assert "hub.concurrent_spawn_limit: 0 is out of range" in msg
    assert "instructors.0: 'Dr Who' is not a valid username" in msg


def test_malformed_yaml_points_at_the_line(tmp_path):
    p = tmp_path / "workshop.yaml"
    p.write_text("event:\n  name: [unclosed\nlimits:\n  cpu: 1\n")
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    assert "not valid YAML at line" in str(e.value)


def test_cli_refuses_a_malformed_config_naming_the_key(tmp_path):
    p = tmp_path / "workshop.yaml"
    p.write_text("limits:\n  memory: 2GB\n")
    for command in ("check", "up"):
        r = subprocess.run([sys.executable, "-m", "workshop.cli", "-c", str(p), command],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0
        assert "limits.memory: '2GB' is not a size" in r.stdout + r.stderr


def test_mapping_onto_jupyterhub_is_set_only_and_carries_every_limit(tmp_path):
    cfg = config.from_dict({"limits": {"cpu": 1.5, "memory": "1G", "pids": 300},
                            "hub": {"state_dir": str(tmp_path), "idle_timeout": 600}}, host=HOST)
    state = HubState(tmp_path).ensure()
    first, second = Config(), Config()
    hubconfig.apply(first, cfg, state, "172.30.0.1")
    hubconfig.apply(second, cfg, state, "172.30.0.1")
    hubconfig.apply(second, cfg, state, "172.30.0.1")
    assert first == second
    s = first.WorkshopSpawner
    assert (s.cpu_limit, s.mem_limit, s.pids_limit) == (1.5, config.GiB, 300)
    assert first.JupyterHub.cleanup_servers is False
    assert first.JupyterHub.hub_ip == "172.30.0.1"
    culler = [svc for svc in first.JupyterHub.services if svc["name"] == "idle-culler"][0]
    assert "--timeout=600" in culler["command"]
    role = [r for r in first.JupyterHub.load_roles if r["name"] == "idle-culler"][0]
    assert sorted(role["scopes"]) == sorted(hubconfig.CULLER_SCOPES)
