"""The hub's local state directory: generated secrets, passwords and the database.

Everything here is created once and then reused, so restarting the hub keeps
cookies, the proxy's token, the event code and instructor passwords stable.
The directory is readable by root only; attendee containers never mount it.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from .config import WorkshopConfig

# Unambiguous characters for codes people read off a projected slide.
_CODE_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


def _human_code(n: int) -> str:
    return "".join(secrets.choice(_CODE_ALPHABET) for _ in range(n))


@dataclass(frozen=True)
class HubState:
    """Paths and secrets the hub needs, all under one directory."""

    root: Path

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.root / 'jupyterhub.sqlite'}"

    @property
    def cookie_secret_file(self) -> Path:
        return self.root / "jupyterhub_cookie_secret"

    @property
    def proxy_pid_file(self) -> Path:
        return self.root / "proxy.pid"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    def _secret(self, name: str, make) -> str:
        path = self.root / name
        if path.exists():
            return path.read_text().strip()
        value = make()
        _write_private(path, value + "\n")
        return value

    @property
    def proxy_token(self) -> str:
        return self._secret("proxy_token", lambda: secrets.token_hex(32))

    @property
    def admin_token(self) -> str:
        """API token of the `workshop-cli` service (used by `workshop status` and tests)."""
        return self._secret("admin_token", lambda: secrets.token_hex(32))

    def access_code(self, cfg: WorkshopConfig) -> str:
        """The event code: from the config when given, else generated once."""
        if cfg.event.access_code:
            return cfg.event.access_code
        return self._secret("access_code", lambda: f"{_human_code(4)}-{_human_code(4)}")

    def instructor_passwords(self, cfg: WorkshopConfig) -> dict[str, str]:
        """A generated password per configured instructor, stable across restarts."""
        path = self.root / "instructors.json"
        stored = json.loads(path.read_text()) if path.exists() else {}
        wanted = {name: stored.get(name) or secrets.token_urlsafe(12) for name in cfg.instructors}
        if wanted != stored:
            _write_private(path, json.dumps(wanted, indent=2) + "\n")
        return wanted

    def ensure(self) -> "HubState":
        """Create the directory (mode 0700) and the cookie secret."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self.log_dir.mkdir(exist_ok=True)
        if not self.cookie_secret_file.exists():
            _write_private(self.cookie_secret_file, secrets.token_hex(32) + "\n")
        return self


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def state_for(cfg: WorkshopConfig) -> HubState:
    """The state directory named in the config, created if needed."""
    return HubState(cfg.hub.state_dir).ensure()
