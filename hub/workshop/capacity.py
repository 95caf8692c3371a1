"""The capacity model: how many attendees one host holds, and why.

Memory is the hard bound. Attendee containers get no swap, so each attendee's
memory limit must fit in what the host has left after the reserve for the
hub, proxy, monitoring and the system. CPU is shared: the attendees together
are capped at the host's cores minus the reserve, each gets an equal weight,
and each attendee's own CPU limit may be overcommitted by `cpu_overcommit`
because most attendees are idle most of the time.

The same `plan()` feeds `workshop capacity`, `workshop check`, the parent
cgroup's caps and admission control, so every part agrees on the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import GiB, HostFacts, WorkshopConfig, format_size


@dataclass(frozen=True)
class KnownHost:
    """A machine type people rent or bring for a workshop."""

    name: str
    cpus: float
    memory: int
    note: str = ""


# vCPU and RAM as AWS publishes them for each instance type.
KNOWN_HOSTS = (
    KnownHost("AWS g2.2xlarge", 8, 15 * GiB, "retired; K520 GPU unsupported by current CUDA"),
    KnownHost("AWS g2.8xlarge", 32, 60 * GiB, "retired; K520 GPU unsupported by current CUDA"),
    KnownHost("AWS g4dn.xlarge", 4, 16 * GiB, "T4 GPU"),
    KnownHost("AWS g4dn.2xlarge", 8, 32 * GiB, "T4 GPU"),
    KnownHost("AWS g5.2xlarge", 8, 32 * GiB, "A10G GPU"),
)


@dataclass(frozen=True)
class Capacity:
    """Seats on one host, with the budget they come from."""

    host: HostFacts
    attendee_cpu: float       # cores all attendee containers together may use
    attendee_memory: int      # bytes all attendee containers together may use
    seats_by_memory: int
    seats_by_cpu: int
    seats: int                # everyone, instructors included
    instructor_seats: int     # held back for instructors
    reasoning: tuple[str, ...]

    @property
    def attendee_seats(self) -> int:
        """Seats open to attendees (the rest are kept for instructors)."""
        return max(0, self.seats - self.instructor_seats)

    @property
    def bound(self) -> str:
        return "memory" if self.seats_by_memory <= self.seats_by_cpu else "CPU"


def plan(cfg: WorkshopConfig, host: HostFacts) -> Capacity:
    """Work out the seats `host` offers under `cfg`'s limits and reserve."""
    res = cfg.capacity
    cpu_budget = max(0.0, host.cpus - res.reserve_cpu)
    mem_budget = max(0, host.memory - res.reserve_memory)
    by_memory = mem_budget // cfg.limits.memory
    by_cpu = math.floor(cpu_budget * res.cpu_overcommit / cfg.limits.cpu + 1e-9)
    seats = int(min(by_memory, by_cpu))
    instructor_seats = min(res.instructor_seats, seats)
    reasoning = (
        f"host: {host.cpus:g} CPU, {format_size(host.memory)} RAM",
        f"reserve for hub, proxy, monitoring, system: {res.reserve_cpu:g} CPU, {format_size(res.reserve_memory)}",
        f"attendee budget (the parent cgroup's cap): {cpu_budget:g} CPU, {format_size(mem_budget)}",
        f"seats by memory: {format_size(mem_budget)} / {format_size(cfg.limits.memory)} per attendee "
        f"(no swap) = {by_memory}",
        f"seats by CPU: {cpu_budget:g} CPU x {res.cpu_overcommit:g} overcommit / {cfg.limits.cpu:g} CPU "
        f"per attendee = {by_cpu}",
        f"seats: {seats} ({'memory' if by_memory <= by_cpu else 'CPU'} bound), "
        f"of which {instructor_seats} kept for instructors: {max(0, seats - instructor_seats)} for attendees",
    )
    return Capacity(host=host, attendee_cpu=cpu_budget, attendee_memory=mem_budget,
                    seats_by_memory=int(by_memory), seats_by_cpu=int(by_cpu), seats=seats,
                    instructor_seats=instructor_seats, reasoning=reasoning)


def event_fits(cfg: WorkshopConfig, cap: Capacity) -> tuple[bool, str]:
    """Whether the expected attendees fit in the attendee seats, said plainly."""
    want, have = cfg.event.attendees, cap.attendee_seats
    if want <= have:
        return True, f"event.attendees {want} fits in {have} attendee seats"
    return False, (f"event.attendees is {want} but this host has {have} attendee seats; "
                   f"lower limits.memory or limits.cpu, use a bigger host, or expect refusals "
                   f"(see `workshop capacity`)")


def render_table(cfg: WorkshopConfig, rows: list[tuple[str, HostFacts, str]]) -> str:
    """A plain-text table of seats per host for the configured limits."""
    header = ("host", "CPU", "RAM", "by memory", "by CPU", "attendee seats", "note")
    lines = [header]
    for name, host, note in rows:
        cap = plan(cfg, host)
        lines.append((name, f"{host.cpus:g}", format_size(host.memory), str(cap.seats_by_memory),
                      str(cap.seats_by_cpu), str(cap.attendee_seats), note))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    out = []
    for i, row in enumerate(lines):
        out.append("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def report(cfg: WorkshopConfig, host: HostFacts) -> str:
    """`workshop capacity`: this host's reasoning, then common hosts side by side."""
    cap = plan(cfg, host)
    parts = [f"Per attendee: {cfg.limits.cpu:g} CPU, {format_size(cfg.limits.memory)} RAM, "
             f"{cfg.limits.pids} processes", "", "This machine:"]
    parts += [f"  {line}" for line in cap.reasoning]
    fits, message = event_fits(cfg, cap)
    parts += ["", ("" if fits else "WARNING: ") + message, "", "Common hosts with these limits:"]
    rows = [("this machine", host, "")] + [(k.name, HostFacts(k.cpus, k.memory), k.note) for k in KNOWN_HOSTS]
    parts.append(render_table(cfg, rows))
    return "\n".join(parts)
