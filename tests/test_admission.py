"""Admission control on a real hub: a full workshop says so, instructors still get in,
and a low-memory host stops admitting new servers."""

from __future__ import annotations

import re

import pytest

from harness import remove_user_objects, start_hub
from hubclient import login

# On any host with 2+ cores: 2 CPU budget x 1 / 0.5 CPU = 4 seats, 2 of them
# held back for instructors, so exactly 2 attendee seats.
TWO_SEATS = {
    "limits": {"cpu": 0.5, "memory": "512M", "pids": 256},
    "capacity": {"reserve_cpu": 0, "reserve_memory": "1G", "cpu_overcommit": 1, "instructor_seats": 2,
                 "cgroup_parent": "workshop-test-admission"},
}


@pytest.fixture(scope="module")
def small_hub(tmp_path_factory, docker_client):
    h = start_hub(tmp_path_factory.mktemp("admission"), **TWO_SEATS)
    yield h
    h.stop()
    remove_user_objects(docker_client, h.created_users)


@pytest.fixture(scope="module")
def low_memory_hub(tmp_path_factory, docker_client):
    # A floor far above what any test machine has: every attendee spawn meets it.
    h = start_hub(tmp_path_factory.mktemp("lowmem"), capacity={"min_free_memory": "64T",
                                                                     "cgroup_parent": "workshop-test-lowmem"})
    yield h
    h.stop()
    remove_user_objects(docker_client, h.created_users)


def spawn_page(hub, session, name):
    """What the browser shows when the attendee asks for their server."""
    return session.get(f"{hub.url}/hub/spawn/{name}", timeout=60)


def refusals(hub, reason):
    text = hub.api("GET", "/../metrics").text
    m = re.search(rf'^workshop_admission_refusals_total{{reason="{reason}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_third_attendee_gets_the_full_page_and_a_freed_seat_admits_them(small_hub):
    hub = small_hub
    first, _, _ = hub.new_attendee("seat")
    second, _, _ = hub.new_attendee("seat")
    hub.start_server(first)
    hub.start_server(second)

    third, _, session = hub.new_attendee("late")
    page = spawn_page(hub, session, third)
    assert page.status_code == 503
    assert "The workshop server is full: 2 of 2 seats are taken. Ask your instructor." in page.text
    assert "Traceback" not in page.text
    assert refusals(hub, "seats") == 1.0
    assert "admission refused" in hub.log_tail(200)
    # Nothing else was disturbed.
    for name in (first, second):
        assert hub.api("GET", f"/users/{name}").json()["servers"][""]["ready"]
    assert not hub.api("GET", f"/users/{third}").json()["servers"]

    # An instructor is admitted although the attendee seats are all taken.
    teacher, password = hub.instructor
    login(hub.url, teacher, password)
    hub.created_users.add(teacher)
    hub.start_server(teacher)

    # A freed seat admits the next attendee.
    hub.stop_server(first)
    page = spawn_page(hub, session, third)
    assert page.status_code == 200
    hub.wait_ready(third)


def test_low_available_memory_refuses_new_servers_with_its_own_message(low_memory_hub):
    hub = low_memory_hub
    name, _, session = hub.new_attendee("mem")
    page = spawn_page(hub, session, name)
    assert page.status_code == 503
    assert "The workshop server is short of memory right now" in page.text
    assert "64T needed to start another server" in page.text
    assert refusals(hub, "memory") == 1.0
    assert hub.alive()
