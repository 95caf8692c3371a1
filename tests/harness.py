"""A real workshop hub for tests and benchmarks: `workshop up` with its own ports,
state directory and Docker network, so it never touches an instructor's hub."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker
import requests
import yaml

from hubclient import login, signup

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
ARTIFACTS = REPO / "artifacts"
IMAGE = os.environ.get("WORKSHOP_IMAGE", "workshop-attendee:latest")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningHub:
    """A `workshop up` process and what tests need to talk to it."""

    workdir: Path
    config_path: Path
    settings: dict
    url: str = ""
    api_url: str = ""
    api_token: str = ""
    access_code: str = ""
    instructor: tuple[str, str] = ("", "")
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    created_users: set[str] = field(default_factory=set)
    # What runs the hub; benchmarks swap in a stock JupyterHub for comparison.
    command: list[str] | None = None

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def start(self, timeout: float = 90) -> None:
        self.log_path = self.workdir / "hub.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.command or [str(VENV_BIN / "workshop"), "-c", str(self.config_path), "up"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, WORKSHOP_CONFIG=str(self.config_path)),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.api_url}/", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"hub did not answer within {timeout}s:\n{self.log_tail()}")
        self.api_token = (self.state_dir / "admin_token").read_text().strip()
        name, password = next(iter(json.loads((self.state_dir / "instructors.json").read_text()).items()))
        self.instructor = (name, password)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and \
            requests.get(f"{self.api_url}/", timeout=5).status_code == 200

    def log_tail(self, n: int = 60) -> str:
        if not self.log_path or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    # --- the hub REST API, as the admin service -------------------------
    def api(self, method: str, path: str, **kw) -> requests.Response:
        return requests.request(method, f"{self.api_url}{path}", timeout=60,
                                headers={"Authorization": f"token {self.api_token}"}, **kw)

    def new_attendee(self, prefix: str = "att") -> tuple[str, str, requests.Session]:
        """Sign up a fresh attendee through the form and log them in."""
        name = f"{prefix}{secrets.token_hex(3)}"
        password = secrets.token_urlsafe(12)
        ok, message = signup(self.url, name, password, self.access_code)
        assert ok, f"sign-up of {name} refused: {message}"
        self.created_users.add(name)
        return name, password, login(self.url, name, password)

    def start_server(self, name: str, timeout: float = 240) -> dict:
        """Ask the hub to start a user's server and wait until it is ready."""
        r = self.api("POST", f"/users/{name}/server")
        assert r.status_code in (201, 202, 400), f"spawn request failed: {r.status_code} {r.text}"
        return self.wait_ready(name, timeout)

    def wait_ready(self, name: str, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            user = self.api("GET", f"/users/{name}").json()
            server = user.get("servers", {}).get("")
            if server and server.get("ready"):
                return server
            if not server and not user.get("pending"):
                raise AssertionError(f"server of {name} is gone:\n{self.log_tail()}")
            time.sleep(0.5)
        raise AssertionError(f"server of {name} not ready after {timeout}s:\n{self.log_tail()}")

    def stop_server(self, name: str, timeout: float = 120) -> None:
        self.api("DELETE", f"/users/{name}/server")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.api("GET", f"/users/{name}").json().get("servers"):
                return
            time.sleep(0.5)
        raise AssertionError(f"server of {name} did not stop")

    def user_token(self, name: str) -> str:
        r = self.api("POST", f"/users/{name}/tokens", json={"note": "test", "expires_in": 3600})
        r.raise_for_status()
        return r.json()["token"]

    def server_url(self, name: str) -> str:
        return f"{self.url}/user/{name}"


def write_test_config(workdir: Path, **overrides) -> tuple[Path, dict]:
    settings = {
        "event": {"name": "Test Workshop", "access_code": "test-" + secrets.token_hex(4)},
        "instructors": ["teacher"],
        "limits": {"cpu": 1.0, "memory": "768M", "pids": 256},
        "image": {"name": IMAGE},
        # Its own parent cgroup, so tests never re-cap an instructor's hub here.
        "capacity": {"cgroup_parent": "workshop-test-attendees"},
        "hub": {
            "ip": "127.0.0.1",
            "port": free_port(),
            "api_port": free_port(),
            "proxy_api_port": free_port(),
            "state_dir": "state",
            "network": "workshop-test-attendees",
            "idle_timeout": 3600,
            "uid_base": 30000,
            "start_timeout": 240,
        },
    }
    for key, value in overrides.items():
        settings[key] = {**settings.get(key, {}), **value} if isinstance(value, dict) else value
    path = workdir / "workshop.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path, settings



def start_hub(workdir: Path, command: list[str] | None = None, **overrides) -> RunningHub:
    """Write a test workshop.yaml into workdir and run `workshop up` (or `command`) on it."""
    path, settings = write_test_config(workdir, **overrides)
    h = RunningHub(workdir=workdir, config_path=path, settings=settings, command=command)
    h.url = f"http://127.0.0.1:{settings['hub']['port']}"
    h.api_url = f"{h.url}/hub/api"
    h.access_code = settings["event"]["access_code"]
    h.start()
    return h


def remove_user_objects(client, names) -> None:
    """Remove the containers and home volumes of the given users."""
    for c in client.containers.list(all=True, filters={"label": "org.workshop.role=attendee"}):
        if c.labels.get("org.workshop.user") in names:
            c.remove(force=True)
    for v in client.volumes.list(filters={"label": "org.workshop.user"}):
        if (v.attrs.get("Labels") or {}).get("org.workshop.user") in names:
            try:
                v.remove(force=True)
            except docker.errors.APIError:
                pass
