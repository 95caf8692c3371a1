"""Maps the validated workshop config onto JupyterHub's traitlets config.

Each `set_*` function only assigns values (never appends), so applying the
mapping twice gives the same result. This is the one place where workshop.yaml
keys meet JupyterHub, DockerSpawner and authenticator settings.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from . import capacity, cgroups
from .config import HostFacts, WorkshopConfig
from .network import host_local_addresses
from .state import HubState

# The least the idle culler needs (jupyterhub-idle-culler 2.x docs).
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]
# `workshop status`, the ops tooling and the test-suite act as this service.
CLI_SCOPES = [
    "admin:users", "admin:servers", "list:users", "read:users", "read:servers",
    "read:metrics", "read:hub", "read:services", "tokens", "access:servers",
]


def set_network(c, cfg: WorkshopConfig, gateway_ip: str) -> None:
    """Public proxy on the configured address; hub API on the attendee gateway only."""
    c.JupyterHub.ip = cfg.hub.ip
    c.JupyterHub.port = cfg.hub.port
    c.JupyterHub.hub_ip = gateway_ip
    c.JupyterHub.hub_connect_ip = gateway_ip
    c.JupyterHub.hub_port = cfg.hub.api_port
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{cfg.hub.proxy_api_port}"


def set_state(c, state: HubState) -> None:
    """Embedded defaults: SQLite and secrets in the state directory."""
    c.JupyterHub.db_url = state.db_url
    c.JupyterHub.cookie_secret_file = str(state.cookie_secret_file)
    c.ConfigurableHTTPProxy.auth_token = state.proxy_token
    c.ConfigurableHTTPProxy.pid_file = str(state.proxy_pid_file)
    chp = shutil.which("configurable-http-proxy")
    if chp:
        c.ConfigurableHTTPProxy.command = [chp]


def set_lifecycle(c, cfg: WorkshopConfig) -> None:
    """Servers outlive hub restarts; timeouts fit a room starting at once."""
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.concurrent_spawn_limit = cfg.hub.concurrent_spawn_limit
    c.Spawner.start_timeout = cfg.hub.start_timeout
    c.Spawner.http_timeout = cfg.hub.http_timeout
    c.Spawner.default_url = "/lab"


def set_spawner(c, cfg: WorkshopConfig) -> None:
    """Per-attendee limits and image for the workshop spawner."""
    c.JupyterHub.spawner_class = "workshop.spawner.WorkshopSpawner"
    s = c.WorkshopSpawner
    s.image = cfg.image.name
    s.pull_policy = "never"  # the image is built on this host, never pulled
    s.network_name = cfg.hub.network
    s.cpu_limit = cfg.limits.cpu
    s.mem_limit = cfg.limits.memory
    s.pids_limit = cfg.limits.pids
    s.uid_base = cfg.hub.uid_base
    s.environment = {"NBGRADER_COURSE_ID": cfg.course.id}
    s.startup_cpu_shares = cfg.capacity.startup_cpu_shares


def set_admission(c, cfg: WorkshopConfig, host: HostFacts) -> None:
    """Seat budget and memory floor from the capacity model."""
    cap = capacity.plan(cfg, host)
    c.WorkshopSpawner.attendee_seats = cap.attendee_seats
    c.WorkshopSpawner.min_free_memory = cfg.capacity.min_free_memory


def set_cgroups(c, cfg: WorkshopConfig, mode: cgroups.CgroupMode | None = None) -> None:
    """Attendee containers go into the parent cgroup that `workshop up` capped (cgroups.ensure_parent)."""
    c.WorkshopSpawner.cgroup_parent = cgroups.docker_parent(cfg, mode or cgroups.detect())


def set_authenticator(c, cfg: WorkshopConfig, state: HubState, gateway_ip: str) -> None:
    """Self-registration with the event code; configured instructors are admins."""
    c.JupyterHub.authenticator_class = "workshop.authenticator.WorkshopAuthenticator"
    a = c.WorkshopAuthenticator
    a.access_code = state.access_code(cfg)
    a.event_name = cfg.event.name
    a.instructors = set(cfg.instructors)
    a.instructor_passwords = state.instructor_passwords(cfg)
    # The proxy runs on this host and reaches the hub's gateway address from
    # one of the host's own addresses (which one is the kernel's choice), so
    # X-Forwarded-For is trusted from those. Containers connect from their
    # own bridge addresses and are never trusted.
    own = {f"{ip}/32" for ip in host_local_addresses()} | {f"{gateway_ip}/32"}
    a.trusted_proxy_networks = ["127.0.0.0/8", "::1/128", *sorted(own - {"127.0.0.1/32"})]


def set_services(c, cfg: WorkshopConfig, state: HubState) -> None:
    """The idle culler and the CLI's API identity, each with only the scopes it needs."""
    services = [{"name": "workshop-cli", "api_token": state.admin_token}]
    roles = [{"name": "workshop-cli", "scopes": CLI_SCOPES, "services": ["workshop-cli"]}]
    if cfg.hub.idle_timeout > 0:
        services.append({
            "name": "idle-culler",
            "command": [sys.executable, "-m", "jupyterhub_idle_culler",
                        f"--timeout={cfg.hub.idle_timeout}", "--cull-every=60"],
        })
        roles.append({"name": "idle-culler", "scopes": CULLER_SCOPES, "services": ["idle-culler"]})
    c.JupyterHub.services = services
    c.JupyterHub.load_roles = roles


def apply(c, cfg: WorkshopConfig, state: HubState, gateway_ip: str, host: HostFacts | None = None) -> None:
    """Set every JupyterHub option the workshop controls."""
    set_network(c, cfg, gateway_ip)
    set_state(c, state)
    set_lifecycle(c, cfg)
    set_spawner(c, cfg)
    set_cgroups(c, cfg)
    set_admission(c, cfg, host or HostFacts.detect())
    set_authenticator(c, cfg, state, gateway_ip)
    set_services(c, cfg, state)
    c.JupyterHub.template_paths = [str(Path(__file__).parent / "templates")]
