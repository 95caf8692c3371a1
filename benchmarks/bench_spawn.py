"""Spawn-to-ready time and idle memory of attendee containers, measured on a real hub.

Prints:
  - spawn-to-ready for one attendee at a time (a few runs);
  - 10 attendees who log in at the same moment: median and worst time from
    their login to a server that answers through the proxy;
  - idle memory per attendee container (docker stats, after settling).

Run: .venv/bin/python benchmarks/bench_spawn.py [--herd 10] [--single 3]
It starts its own hub on free loopback ports and removes what it created.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import docker  # noqa: E402

from harness import remove_user_objects, start_hub  # noqa: E402
from hubclient import login, signup  # noqa: E402


def time_to_ready(hub, name: str, password: str, timeout: float = 600) -> float:
    """Log in through the form, ask for the server as a browser would, wait until it answers."""
    t0 = time.monotonic()
    session = login(hub.url, name, password)
    session.get(f"{hub.url}/hub/spawn/{name}", timeout=timeout, allow_redirects=False)
    while time.monotonic() - t0 < timeout:
        # What a browser does: open JupyterLab, following the OAuth hand-off.
        r = session.get(f"{hub.url}/user/{name}/lab", timeout=60)
        if r.status_code == 200 and r.url.startswith(f"{hub.url}/user/{name}/lab"):
            return time.monotonic() - t0
        time.sleep(0.25)
    raise TimeoutError(f"{name} not ready after {timeout}s")


def new_user(hub, prefix: str) -> tuple[str, str]:
    import secrets

    name, password = f"{prefix}{secrets.token_hex(3)}", secrets.token_urlsafe(12)
    ok, msg = signup(hub.url, name, password, hub.access_code)
    if not ok:
        raise RuntimeError(f"sign-up refused: {msg}")
    hub.created_users.add(name)
    return name, password


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=3, help="sequential single spawns to time")
    parser.add_argument("--herd", type=int, default=10, help="attendees logging in at once")
    parser.add_argument("--cpu", type=float, default=1.0, help="per-attendee CPU limit")
    parser.add_argument("--memory", default="1G", help="per-attendee memory limit")
    args = parser.parse_args()

    client = docker.from_env()
    workdir = Path(tempfile.mkdtemp(prefix="bench-spawn-"))
    hub = start_hub(workdir, limits={"cpu": args.cpu, "memory": args.memory, "pids": 512},
                    hub={"concurrent_spawn_limit": max(20, args.herd)},
                    # Measure spawning, not admission: no seats held back.
                    capacity={"instructor_seats": 0, "cpu_overcommit": 16})
    print(f"hub at {hub.url}; limits {args.cpu} CPU, {args.memory} per attendee; host {client.info()['NCPU']} CPUs")
    try:
        singles = []
        for i in range(args.single):
            name, password = new_user(hub, "solo")
            t = time_to_ready(hub, name, password)
            singles.append(t)
            print(f"  single spawn {i + 1}/{args.single}: {t:.2f} s", flush=True)
            hub.stop_server(name)
        if singles:
            print(f"single attendee spawn-to-ready: median {statistics.median(singles):.2f} s, "
                  f"worst {max(singles):.2f} s (n={len(singles)})")

        herd = [new_user(hub, "herd") for _ in range(args.herd)]
        results: dict[str, float | Exception] = {}
        barrier = threading.Barrier(len(herd))

        def attendee(name, password):
            barrier.wait()
            try:
                results[name] = time_to_ready(hub, name, password)
            except Exception as e:  # recorded and reported, not raised in a thread
                results[name] = e
            done = len(results)
            print(f"  herd: {done}/{len(herd)} ready", flush=True)

        threads = [threading.Thread(target=attendee, args=u) for u in herd]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        times = sorted(v for v in results.values() if isinstance(v, float))
        failures = [f"{k}: {v}" for k, v in results.items() if isinstance(v, Exception)]
        if times:
            print(f"{args.herd} attendees logging in at once: median {statistics.median(times):.2f} s, "
                  f"worst {max(times):.2f} s, all ready after {wall:.2f} s; failures: {len(failures)}")
        for f in failures:
            print(f"  failed: {f}")

        time.sleep(20)  # let start-up work finish before reading idle memory
        usages = []
        for c in client.containers.list(filters={"label": "org.workshop.role=attendee"}):
            if c.labels.get("org.workshop.user") in hub.created_users:
                stats = c.stats(stream=False)
                mem = stats["memory_stats"]
                used = mem["usage"] - mem.get("stats", {}).get("total_inactive_file", mem.get("stats", {}).get("inactive_file", 0))
                usages.append(used / 2**20)
        if usages:
            print(f"idle memory per attendee container: median {statistics.median(usages):.0f} MiB, "
                  f"max {max(usages):.0f} MiB (n={len(usages)}, usage minus inactive file cache)")
    finally:
        hub.stop()
        remove_user_objects(client, hub.created_users)
    return 0


if __name__ == "__main__":
    sys.exit(main())
