"""All attendees together stay inside one capped parent cgroup, and the hub outlives them.

Runs for real: the hub from `workshop up`, attendee containers it spawned, the
kernel's cgroup files and /proc. The fair-share scenario runs two busy
containers of the attendee image under a temporary parent of its own.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from harness import IMAGE, VENV_BIN
from workshop import capacity, cgroups, config

CGROUP_ROOT = Path("/sys/fs/cgroup")


@pytest.fixture(scope="module")
def hub_config(hub):
    return config.load(hub.config_path)


@pytest.fixture(scope="module")
def mode(docker_client):
    return cgroups.detect(docker_client.info())


@pytest.fixture(scope="module")
def attendee_containers(hub, docker_client):
    """Two attendees with running servers, started together."""
    names = [hub.new_attendee("cg")[0] for _ in range(2)]
    for name in names:
        r = hub.api("POST", f"/users/{name}/server")
        assert r.status_code in (201, 202), f"spawn of {name} failed: {r.status_code} {r.text}"
    for name in names:
        hub.wait_ready(name)
    containers = []
    for name in names:
        found = docker_client.containers.list(filters={"label": f"org.workshop.user={name}"})
        assert len(found) == 1, f"expected one running container for {name}, found {found}"
        containers.append(found[0])
    yield containers
    for name in names:
        hub.stop_server(name)


def read(path: Path) -> str:
    return path.read_text().strip()


def cgroup_paths(pid: int) -> dict[str, str]:
    """Controller (or "" for the v2 hierarchy) -> the process's cgroup path."""
    paths = {}
    for line in read(Path(f"/proc/{pid}/cgroup")).splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") or [""]:
            paths[controller] = path
    return paths


def test_parent_cgroup_caps_all_attendees_at_the_capacity_plan(hub, hub_config, mode, attendee_containers):
    plan = capacity.plan(hub_config, config.HostFacts.detect())
    page = os.sysconf("SC_PAGE_SIZE")
    want_quota = round(plan.attendee_cpu * 100_000)
    want_memory = plan.attendee_memory // page * page
    dirs = mode.directories(hub_config)
    if mode.version == 2:
        quota, period = read(dirs["cpu"] / "cpu.max").split()
        assert (int(quota), int(period)) == (want_quota, 100_000)
        assert int(read(dirs["memory"] / "memory.max")) == want_memory
        swap = dirs["memory"] / "memory.swap.max"
        assert not swap.exists() or read(swap) == "0"
    else:
        assert int(read(dirs["cpu"] / "cpu.cfs_period_us")) == 100_000
        assert int(read(dirs["cpu"] / "cpu.cfs_quota_us")) == want_quota
        assert int(read(dirs["memory"] / "memory.limit_in_bytes")) == want_memory
        memsw = dirs["memory"] / "memory.memsw.limit_in_bytes"
        assert not memsw.exists() or int(read(memsw)) == want_memory
    # Attendees get what is left after the reserve, and nothing more.
    assert want_quota / 100_000 == pytest.approx(plan.host.cpus - hub_config.capacity.reserve_cpu, abs=1e-4)


def test_workshop_check_reports_the_layout_and_the_parent_as_ok(hub, mode):
    r = subprocess.run([str(VENV_BIN / "workshop"), "-c", str(hub.config_path), "check"],
                       capture_output=True, text=True, timeout=120)
    line = next((line for line in r.stdout.splitlines() if f"cgroup v{mode.version}" in line), None)
    assert line is not None, r.stdout + r.stderr
    assert line.startswith("[ok  ]") and f"Docker's {mode.driver} driver" in line and "caps all attendees at" in line


def test_every_attendee_process_runs_inside_the_parent(hub_config, mode, attendee_containers):
    parent = cgroups.docker_parent(hub_config, mode)
    inside = "/" + mode.relative_path(hub_config) + "/"
    for container in attendee_containers:
        container.reload()
        assert container.attrs["HostConfig"]["CgroupParent"] == parent
        pids = [int(row[1]) for row in container.top()["Processes"]]
        assert container.attrs["State"]["Pid"] in pids and len(pids) >= 2
        for pid in pids:
            paths = cgroup_paths(pid)
            controllers = ("",) if mode.version == 2 else ("cpu", "cpuacct", "memory", "pids")
            for controller in controllers:
                assert paths[controller].startswith(inside), \
                    f"pid {pid} of {container.name} is in {controller}:{paths[controller]}, not under {inside}"


def test_attendees_have_equal_cpu_weight_and_go_first_when_memory_runs_out(attendee_containers):
    import time

    # Once their start-up boost is over, every attendee has the same weight.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for container in attendee_containers:
            container.reload()
        if all(c.attrs["HostConfig"]["CpuShares"] == 1024 for c in attendee_containers):
            break
        time.sleep(0.5)
    weights = set()
    for container in attendee_containers:
        hc = container.attrs["HostConfig"]
        weights.add(hc["CpuShares"])
        assert hc["OomScoreAdj"] == cgroups.ATTENDEE_OOM_SCORE_ADJ
        assert read(Path(f"/proc/{container.attrs['State']['Pid']}/oom_score_adj")) == \
            str(cgroups.ATTENDEE_OOM_SCORE_ADJ)
    assert weights == {1024}


def test_hub_and_its_proxy_are_last_in_the_oom_killers_line(hub, attendee_containers):
    hub_pid = hub.proc.pid  # `workshop up` exec'd into jupyterhub, keeping the pid
    proxy_pid = int(read(hub.state_dir / "proxy.pid"))
    scores = {pid: int(read(Path(f"/proc/{pid}/oom_score_adj"))) for pid in (hub_pid, proxy_pid)}
    if cgroups.can_lower_oom_score():
        assert scores == {hub_pid: cgroups.HUB_OOM_SCORE_ADJ, proxy_pid: cgroups.HUB_OOM_SCORE_ADJ}
    else:
        # Without CAP_SYS_RESOURCE nobody may go below 0: the hub says so and
        # stays at 0, still well behind the attendees.
        assert "could not set /proc/self/oom_score_adj to -900" in hub.log_path.read_text()
        assert scores == {hub_pid: 0, proxy_pid: 0}
    assert all(score < cgroups.ATTENDEE_OOM_SCORE_ADJ for score in scores.values())


@pytest.fixture
def one_core_parent(hub_config, mode):
    """A temporary parent capped at one core, removed with everything in it afterwards."""
    name = f"workshop-test-share-{secrets.token_hex(3)}"
    cfg = dataclasses.replace(hub_config, capacity=dataclasses.replace(hub_config.capacity, cgroup_parent=name))
    plan = dataclasses.replace(capacity.plan(cfg, config.HostFacts.detect()), attendee_cpu=1.0)
    parent = cgroups.ensure_parent(cfg, plan, mode)
    yield parent
    # Docker created the parent in every other hierarchy as well.
    rel = mode.relative_path(cfg)
    for directory in [*CGROUP_ROOT.glob(f"*/{rel}"), CGROUP_ROOT / rel]:
        if directory.is_dir():
            directory.rmdir()


def test_two_busy_attendees_split_a_one_core_parent_evenly(docker_client, mode, one_core_parent):
    busy = []
    try:
        for _ in range(2):
            busy.append(docker_client.containers.run(
                IMAGE, entrypoint=["sh", "-c", "while :; do :; done"], detach=True, network_mode="none",
                cgroup_parent=one_core_parent, cpu_period=100_000, cpu_quota=100_000, cpu_shares=1024,
                labels={"org.workshop.role": "test-busy"},
            ))
        pids = []
        for container in busy:
            container.reload()
            pids.append(container.attrs["State"]["Pid"])
        time.sleep(1)  # both loops running
        start, t0 = [cgroups.cpu_usage_ns(pid, mode) for pid in pids], time.monotonic()
        time.sleep(5)
        used = [cgroups.cpu_usage_ns(pid, mode) - s for pid, s in zip(pids, start)]
        elapsed_ns = (time.monotonic() - t0) * 1e9
    finally:
        for container in busy:
            container.remove(force=True)
    total = sum(used)
    # Two cores are free, yet both loops together get about one: the parent's cap...
    assert 0.8 * elapsed_ns < total < 1.15 * elapsed_ns, f"together {total / elapsed_ns:.2f} cores"
    # ...split evenly, because both have the same weight.
    shares = [u / total for u in used]
    assert all(0.35 <= s <= 0.65 for s in shares), f"shares {shares}"


def test_a_starting_server_gets_a_cpu_boost_that_ends_once_it_answers(hub, docker_client):
    import time

    import threading

    name, _, _ = hub.new_attendee("boost")
    # The spawn request returns only once the server is up (or after the
    # hub's slow-spawn timeout), so ask in the background and watch meanwhile.
    threading.Thread(target=hub.api, args=("POST", f"/users/{name}/server"), daemon=True).start()
    seen = None
    deadline = time.monotonic() + 60
    while seen is None and time.monotonic() < deadline:
        found = docker_client.containers.list(filters={"label": f"org.workshop.user={name}"})
        if found:
            seen = found[0].attrs["HostConfig"]["CpuShares"]
        time.sleep(0.1)
    assert seen == 8192, "a new container starts with the boosted CPU weight"
    hub.wait_ready(name)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        container = docker_client.containers.list(filters={"label": f"org.workshop.user={name}"})[0]
        if container.attrs["HostConfig"]["CpuShares"] == 1024 and \
                f"start-up boost of {name} over after" in hub.log_tail(400):
            break
        time.sleep(0.5)
    assert container.attrs["HostConfig"]["CpuShares"] == 1024, "the boost ends once the server answers"
    assert f"start-up boost of {name} over after" in hub.log_tail(400)
    hub.stop_server(name)


def test_a_boost_cut_short_by_a_hub_restart_is_ended_by_the_restarted_hub(hub, docker_client):
    name, _, _ = hub.new_attendee("restart")
    hub.start_server(name)
    container = docker_client.containers.list(filters={"label": f"org.workshop.user={name}"})[0]
    # As if the hub had died while this server was still starting.
    container.update(cpu_shares=8192)
    hub.restart()
    container.reload()
    assert container.attrs["HostConfig"]["CpuShares"] == 1024
    hub.stop_server(name)
