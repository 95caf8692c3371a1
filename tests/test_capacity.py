"""How many attendees a host holds: the arithmetic an instructor can check by hand."""

from __future__ import annotations

import subprocess
import sys

import yaml

from workshop import capacity, config
from workshop.config import GiB

G4DN_2XL = config.HostFacts(cpus=8, memory=32 * GiB)


def cfg(**sections):
    return config.from_dict(sections)


def test_seats_are_bound_by_memory_with_the_reserve_taken_off_first():
    cap = capacity.plan(cfg(limits={"cpu": 1, "memory": "2G"}), G4DN_2XL)
    assert cap.attendee_memory == 30 * GiB          # 32G minus the 2G reserve
    assert cap.attendee_cpu == 7.5                  # 8 cores minus 0.5
    assert cap.seats_by_memory == 15                # 30G / 2G
    assert cap.seats_by_cpu == 60                   # 7.5 x 8 overcommit / 1
    assert (cap.seats, cap.bound) == (15, "memory")
    assert cap.attendee_seats == 13                 # 2 kept for instructors


def test_seats_become_cpu_bound_when_cpu_is_the_scarcer_resource():
    cap = capacity.plan(cfg(limits={"cpu": 2, "memory": "512M"}, capacity={"cpu_overcommit": 1}), G4DN_2XL)
    assert cap.seats_by_cpu == 3                    # floor(7.5 / 2)
    assert (cap.seats, cap.bound) == (3, "CPU")


def test_a_host_smaller_than_the_reserve_has_no_seats():
    tiny = config.HostFacts(cpus=1, memory=2 * GiB)
    cap = capacity.plan(cfg(), tiny)
    assert cap.seats == 0 and cap.attendee_seats == 0


def test_the_reasoning_shows_each_step_with_its_numbers():
    text = "\n".join(capacity.plan(cfg(), G4DN_2XL).reasoning)
    assert "30G / 2G per attendee (no swap) = 15" in text
    assert "7.5 CPU x 8 overcommit / 1 CPU per attendee = 60" in text
    assert "seats: 15 (memory bound), of which 2 kept for instructors: 13 for attendees" in text


def run_cli(tmp_path, settings, command):
    path = tmp_path / "workshop.yaml"
    settings.setdefault("hub", {})["state_dir"] = str(tmp_path / "state")
    path.write_text(yaml.safe_dump(settings))
    r = subprocess.run([sys.executable, "-m", "workshop.cli", "-c", str(path), command],
                       capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


def test_capacity_command_lists_this_machine_and_the_common_cloud_hosts(tmp_path):
    code, out = run_cli(tmp_path, {"limits": {"memory": "2G"}}, "capacity")
    assert code == 0, out
    for name in ("this machine", "g2.2xlarge", "g2.8xlarge", "g4dn.xlarge", "g4dn.2xlarge", "g5.2xlarge"):
        assert name in out
    g4dn = next(line for line in out.splitlines() if line.startswith("AWS g4dn.2xlarge"))
    assert g4dn.split()[3:7] == ["32G", "15", "60", "13"]


def test_check_flags_an_event_bigger_than_the_host(tmp_path):
    host = config.HostFacts.detect()
    seats = capacity.plan(cfg(), host).attendee_seats
    code, out = run_cli(tmp_path, {"event": {"attendees": seats + 5}}, "check")
    line = next(line for line in out.splitlines() if "capacity:" in line)
    assert line.startswith("[warn]")
    assert f"event.attendees is {seats + 5} but this host has {seats} attendee seats" in line
    code, out = run_cli(tmp_path, {"event": {"attendees": 1}}, "check")
    line = next(line for line in out.splitlines() if "capacity:" in line)
    assert line.startswith("[ok")
