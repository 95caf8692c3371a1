"""The workshop configuration model: one YAML file, one schema, every part reads it.

`load()` reads `workshop.yaml`, validates it against `SCHEMA` and returns a
frozen `WorkshopConfig`. Every error names the key, the value it saw and what
to write instead, because the person reading it is an instructor the evening
before an event, not the author of this module.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

GiB = 1024**3
MiB = 1024**2

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)\s*$")
_SIZE_UNITS = {"": 1, "K": 1024, "M": MiB, "G": GiB, "T": 1024**4}
USERNAME_PATTERN = r"^[a-z][a-z0-9_-]{1,31}$"


class ConfigError(ValueError):
    """A workshop.yaml problem, phrased for the person who has to fix it."""

    def __init__(self, problems: list[str], source: str = "workshop.yaml"):
        self.problems = problems
        self.source = source
        lines = [f"{source} has {len(problems)} problem(s):"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


def parse_size(value: Any, key: str = "size") -> int:
    """Turn '2G', '512M' or a byte count into bytes, or raise with the fix."""
    if isinstance(value, bool):
        raise ConfigError([f"{key}: {value!r} is not a size; write it like 2G or 512M"])
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(str(value).upper()) if isinstance(value, str) else None
    if not m or (isinstance(value, str) and value.strip()[-1:] in "bB"):
        raise ConfigError([f"{key}: {value!r} is not a size; write it like 2G or 512M"])
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


def format_size(n: int) -> str:
    """Bytes as the shortest exact-ish human size (2G, 512M)."""
    for unit in ("T", "G", "M", "K"):
        if n >= _SIZE_UNITS[unit]:
            v = n / _SIZE_UNITS[unit]
            return f"{v:g}{unit}" if v == int(v) else f"{v:.1f}{unit}"
    return f"{n}B"


# The schema is the single description of what workshop.yaml may contain.
# Defaults live here too, so the example file, the docs and the code agree.
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "workshop.yaml",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "event": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1, "default": "Deep Learning Workshop",
                         "description": "Shown on the sign-in page."},
                "access_code": {"type": ["string", "null"], "minLength": 6, "default": None,
                                "description": "Code attendees type to sign up. Left empty, one is generated and kept in the state directory."},
                "attendees": {"type": "integer", "minimum": 1, "default": 24,
                              "description": "How many attendees you expect."},
            },
            "default": {},
        },
        "instructors": {
            "type": "array",
            "items": {"type": "string", "pattern": USERNAME_PATTERN},
            "uniqueItems": True,
            "default": ["instructor"],
            "description": "Usernames that are hub admins; their passwords are generated and kept in the state directory.",
        },
        "limits": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "cpu": {"type": "number", "exclusiveMinimum": 0, "default": 1.0,
                        "description": "CPU cores per attendee container (CFS quota)."},
                "memory": {"type": ["string", "integer"], "default": "2G",
                           "description": "RAM per attendee container, like 2G or 512M. Swap is off: memory+swap equals this."},
                "pids": {"type": "integer", "minimum": 64, "default": 512,
                         "description": "Maximum processes and threads per attendee container."},
            },
            "default": {},
        },
        "capacity": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "reserve_cpu": {"type": "number", "minimum": 0, "default": 0.5,
                                "description": "Cores kept for the hub, proxy, monitoring and sshd; attendees together never get more than the rest."},
                "reserve_memory": {"type": ["string", "integer"], "default": "2G",
                                   "description": "RAM kept for the system in the same way, like 2G."},
                "cpu_overcommit": {"type": "number", "minimum": 1, "default": 8,
                                   "description": "How many attendee CPU limits may share one budget core; attendees are mostly idle, and busy ones share fairly."},
                "instructor_seats": {"type": "integer", "minimum": 0, "default": 2,
                                     "description": "Seats held back for instructors, who are always admitted."},
                "min_free_memory": {"type": ["string", "integer"], "default": "1G",
                                    "description": "Refuse new attendee servers while the host has less available memory than this."},
                "startup_cpu_shares": {"type": "integer", "minimum": 0, "maximum": 262144, "default": 8192,
                                       "description": "CPU weight of a starting server (normal: 1024) until it answers; 0 turns the boost off."},
                "cgroup_parent": {"type": "string", "pattern": r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", "default": "workshop-attendees",
                                  "description": "Parent cgroup of all attendee containers (cgroup v1: a cgroupfs group; v2 with systemd: <name>.slice)."},
            },
            "default": {},
        },
        "image": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1, "default": "workshop-attendee:latest",
                         "description": "Tag of the attendee image."},
                "base": {"type": "string", "minLength": 1, "default": "python:3.11-slim-bookworm",
                         "description": "Base image; built from Debian packages when neither present nor pullable."},
                "ca_bundle": {"type": ["string", "null"], "default": None,
                              "description": "CA bundle for builds behind a TLS-intercepting proxy (default: $PIP_CERT if set). Never left in the image."},
            },
            "default": {},
        },
        "course": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": r"^[a-z][a-z0-9-]{1,40}$", "default": "dl-workshop",
                       "description": "nbgrader course id."},
            },
            "default": {},
        },
        "hub": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "ip": {"type": "string", "default": "127.0.0.1",
                       "description": "Address the public proxy listens on; 0.0.0.0 to serve the venue network."},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 8000,
                         "description": "Public port attendees open in their browser."},
                "api_port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 8081,
                             "description": "Hub API port, bound to the attendee network's gateway only."},
                "proxy_api_port": {"type": "integer", "minimum": 1, "maximum": 65535, "default": 8001,
                                   "description": "configurable-http-proxy's REST API, on 127.0.0.1 only."},
                "state_dir": {"type": "string", "default": "state",
                              "description": "Secrets, database and generated passwords; relative paths are relative to this file."},
                "network": {"type": "string", "pattern": r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$", "default": "workshop-attendees",
                            "description": "Docker bridge network for attendee containers (container-to-container traffic blocked)."},
                "start_timeout": {"type": "integer", "minimum": 10, "default": 300,
                                  "description": "Seconds a server may take to start; sized for a room starting at once."},
                "http_timeout": {"type": "integer", "minimum": 10, "default": 180,
                                 "description": "Seconds for a started server to answer HTTP."},
                "concurrent_spawn_limit": {"type": "integer", "minimum": 1, "default": 20,
                                           "description": "Spawns in flight at once; more get 'try again' instead of overloading the host."},
                "idle_timeout": {"type": "integer", "minimum": 0, "default": 3600,
                                 "description": "Seconds of inactivity before a server is stopped (0: never)."},
                "uid_base": {"type": "integer", "minimum": 1001, "maximum": 2_000_000_000, "default": 20000,
                             "description": "Attendee containers run as uid uid_base + hub user id."},
            },
            "default": {},
        },
    },
}


def _fill_defaults(schema: dict, data: Any) -> Any:
    if schema.get("type") != "object" or not isinstance(data, dict):
        return data
    out = dict(data)
    for key, sub in schema.get("properties", {}).items():
        if key not in out and "default" in sub:
            default = sub["default"]
            out[key] = dict(default) if isinstance(default, dict) else (
                list(default) if isinstance(default, list) else default)
        if key in out:
            out[key] = _fill_defaults(sub, out[key])
    return out


def _describe(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    v = error.validator
    if v == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return (f"{path if error.absolute_path else 'top level'}: unknown key(s) {', '.join(map(repr, extra))}; "
                f"allowed here: {', '.join(allowed)}")
    if v == "type":
        return f"{path}: {error.instance!r} should be of type {error.validator_value}"
    if v == "pattern":
        if error.validator_value == USERNAME_PATTERN:
            return (f"{path}: {error.instance!r} is not a valid username; use 2-32 lowercase letters, "
                    "digits, '-' or '_', starting with a letter")
        return f"{path}: {error.instance!r} does not match the allowed form {error.validator_value}"
    if v in ("minimum", "exclusiveMinimum", "maximum"):
        word = {"minimum": "at least", "exclusiveMinimum": "more than", "maximum": "at most"}[v]
        return f"{path}: {error.instance!r} is out of range; it must be {word} {error.validator_value}"
    if v == "minLength":
        return f"{path}: {error.instance!r} is too short; use at least {error.validator_value} characters"
    if v == "uniqueItems":
        return f"{path}: {error.instance!r} lists a name twice; list each once"
    return f"{path}: {error.message}"


@dataclass(frozen=True)
class HostFacts:
    """What the machine offers, for checking limits against it."""

    cpus: float
    memory: int

    @classmethod
    def detect(cls) -> "HostFacts":
        """Read core count and RAM of this machine."""
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - non-Linux
            cpus = os.cpu_count() or 1
        memory = 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024
                    break
        return cls(cpus=float(cpus), memory=memory)


@dataclass(frozen=True)
class Event:
    name: str
    access_code: str | None
    attendees: int


@dataclass(frozen=True)
class Limits:
    cpu: float
    memory: int
    pids: int


@dataclass(frozen=True)
class CapacitySettings:
    reserve_cpu: float
    reserve_memory: int
    cpu_overcommit: float
    instructor_seats: int
    min_free_memory: int
    startup_cpu_shares: int
    cgroup_parent: str


@dataclass(frozen=True)
class Image:
    name: str
    base: str
    ca_bundle: Path | None


@dataclass(frozen=True)
class Course:
    id: str


@dataclass(frozen=True)
class Hub:
    ip: str
    port: int
    api_port: int
    proxy_api_port: int
    state_dir: Path
    network: str
    start_timeout: int
    http_timeout: int
    concurrent_spawn_limit: int
    idle_timeout: int
    uid_base: int


@dataclass(frozen=True)
class WorkshopConfig:
    """The validated workshop configuration."""

    event: Event
    instructors: tuple[str, ...]
    limits: Limits
    capacity: CapacitySettings
    image: Image
    course: Course
    hub: Hub
    source: Path | None = field(default=None, compare=False)

    @property
    def public_url(self) -> str:
        """URL to print for people on this machine."""
        host = "127.0.0.1" if self.hub.ip in ("", "0.0.0.0", "127.0.0.1") else self.hub.ip
        return f"http://{host}:{self.hub.port}"


def from_dict(data: Any, base_dir: Path | None = None, host: HostFacts | None = None,
              source: str = "workshop.yaml") -> WorkshopConfig:
    """Validate a parsed workshop.yaml and build the config, or raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"top level: expected a mapping of keys (event:, limits:, ...), got {type(data).__name__}"], source)
    data = _fill_defaults(SCHEMA, data)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    problems = [_describe(e) for e in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))]
    memory = None
    if not any(p.startswith("limits.memory") for p in problems):
        try:
            memory = parse_size(data["limits"]["memory"], "limits.memory")
            if memory < 128 * MiB:
                problems.append(f"limits.memory: {data['limits']['memory']!r} is too small for JupyterLab; use at least 256M")
        except ConfigError as e:
            problems.extend(e.problems)
    sizes = {}
    for key in ("reserve_memory", "min_free_memory"):
        if not any(p.startswith(f"capacity.{key}") for p in problems):
            try:
                sizes[key] = parse_size(data["capacity"][key], f"capacity.{key}")
            except ConfigError as e:
                problems.extend(e.problems)
    if host is not None and not problems:
        cpu = data["limits"]["cpu"]
        if cpu > host.cpus:
            problems.append(f"limits.cpu: {cpu} is more than this host's {host.cpus:g} cores; "
                            f"set it to {host.cpus:g} or less")
        if data["capacity"]["reserve_cpu"] >= host.cpus:
            problems.append(f"capacity.reserve_cpu: {data['capacity']['reserve_cpu']} leaves no CPU for attendees on this "
                            f"host's {host.cpus:g} cores; keep it below {host.cpus:g}, e.g. 0.5")
        if sizes["reserve_memory"] >= host.memory:
            problems.append(f"capacity.reserve_memory: {data['capacity']['reserve_memory']!r} leaves no RAM for attendees "
                            f"on this host's {format_size(host.memory)}; e.g. 2G")
        if memory is not None and memory > host.memory:
            problems.append(f"limits.memory: {data['limits']['memory']!r} is more than this host's "
                            f"{format_size(host.memory)} of RAM; set it to {format_size(host.memory // 2)} or less")
    hub = data["hub"]
    ports = {}
    for key in ("port", "api_port", "proxy_api_port"):
        if isinstance(hub[key], int) and hub[key] in ports:
            problems.append(f"hub.{key}: {hub[key]} is the same as hub.{ports[hub[key]]}; pick a different port")
        ports.setdefault(hub[key], key)
    ca = data["image"]["ca_bundle"]
    if ca and not Path(ca).is_file():
        problems.append(f"image.ca_bundle: {ca!r} is not a file; give the path of a PEM CA bundle or remove the key")
    if problems:
        raise ConfigError(problems, source)

    base_dir = base_dir or Path.cwd()
    state_dir = Path(hub["state_dir"])
    if not state_dir.is_absolute():
        state_dir = (base_dir / state_dir).resolve()
    return WorkshopConfig(
        event=Event(**data["event"]),
        instructors=tuple(data["instructors"]),
        limits=Limits(cpu=float(data["limits"]["cpu"]), memory=memory, pids=data["limits"]["pids"]),
        capacity=CapacitySettings(**{**data["capacity"], **sizes,
                                     "reserve_cpu": float(data["capacity"]["reserve_cpu"]),
                                     "cpu_overcommit": float(data["capacity"]["cpu_overcommit"])}),
        image=Image(name=data["image"]["name"], base=data["image"]["base"],
                    ca_bundle=Path(ca) if ca else None),
        course=Course(**data["course"]),
        hub=Hub(**{**hub, "state_dir": state_dir}),
    )


def load(path: str | os.PathLike, host: HostFacts | None = None) -> WorkshopConfig:
    """Read and validate workshop.yaml at `path`."""
    path = Path(path)
    if not path.exists():
        raise ConfigError([f"file not found: {path}; copy workshop.example.yaml to {path.name} and edit it"], str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        raise ConfigError([f"not valid YAML at {where}: {getattr(e, 'problem', e)}"], str(path)) from None
    cfg = from_dict(data, base_dir=path.parent.resolve(), host=host, source=str(path))
    return WorkshopConfig(**{**cfg.__dict__, "source": path.resolve()})

