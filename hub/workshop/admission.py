"""Admission control: whether one more attendee server may start right now.

Two rules, checked when a server is asked for:
- seats: no more attendee servers than the capacity model's attendee seats;
- memory floor: no new server while the host's available memory is below
  the configured floor.
Instructors are always admitted; their servers come from the seats the
capacity model holds back for them.

A refusal is an HTTP error whose message JupyterHub shows on the page the
person is looking at. It is also logged and counted in a Prometheus metric
served by the hub's /hub/metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter
from tornado import web

from .config import format_size

REFUSALS = Counter(
    "workshop_admission_refusals",
    "Attendee servers refused by admission control, by reason",
    ["reason"],
)


class AdmissionRefused(web.HTTPError):
    """A spawn refused by admission control, with the message for the person."""

    def __init__(self, reason: str, message: str):
        # 503: the server is fine, it is just full right now.
        super().__init__(503, message)
        self.reason_code = reason
        self.jupyterhub_message = message


@dataclass(frozen=True)
class Request:
    """What admission needs to know about one spawn request."""

    username: str
    is_instructor: bool
    active_attendee_servers: int   # other attendees' servers, running or starting
    available_memory: int          # bytes the host can hand out now


def decide(req: Request, attendee_seats: int | None, min_free_memory: int) -> AdmissionRefused | None:
    """The refusal for this request, or None when it may start (attendee_seats None: no seat check)."""
    if req.is_instructor:
        return None
    if attendee_seats is not None and req.active_attendee_servers >= attendee_seats:
        taken = req.active_attendee_servers
        return AdmissionRefused(
            "seats",
            f"The workshop server is full: {taken} of {attendee_seats} seats are taken. "
            "Ask your instructor.",
        )
    if req.available_memory < min_free_memory:
        return AdmissionRefused(
            "memory",
            f"The workshop server is short of memory right now ({format_size(req.available_memory)} free, "
            f"{format_size(min_free_memory)} needed to start another server). "
            "Try again in a few minutes, or ask your instructor.",
        )
    return None


def available_memory() -> int:
    """MemAvailable of this host, in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def active_attendee_servers(users, except_user: str) -> int:
    """Attendee (non-admin) servers that are running or starting, other than `except_user`'s."""
    count = 0
    for user in users.values():
        if user.admin or user.name == except_user:
            continue
        count += sum(1 for spawner in user.spawners.values() if spawner.active)
    return count
