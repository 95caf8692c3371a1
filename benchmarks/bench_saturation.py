"""A saturated host: how long a late attendee waits, whether the hub stays fast,
and whether busy attendees share the CPU fairly.

Load: `--greedy` attendees each run 4 CPU-bound processes, one light attendee
runs 1, all started from their kernels over the Jupyter websocket. While that
runs, the benchmark measures:
  - a late attendee's spawn-to-ready (login form to JupyterLab loaded);
  - hub login-page latency (p50/p95/p99);
  - each attendee's CPU use from cgroup accounting, and Jain's fairness index;
  - host available memory.
It does this with the workshop spawner, with its start-up CPU boost on and
off. A JSON copy goes to artifacts/bench_saturation.json.

The same load also runs against a stock configuration (plain DockerSpawner:
no limits, no parent cgroup, no boost, no admission; same hub and proxy), and
the ratio is printed. Not yet here: the Theano training load and a PNG plot.

Run: .venv/bin/python benchmarks/bench_saturation.py [--greedy 9]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import docker  # noqa: E402
import requests  # noqa: E402

from bench_spawn import new_user, time_to_ready  # noqa: E402
from harness import ARTIFACTS, remove_user_objects, start_hub  # noqa: E402
from kernelclient import Kernel  # noqa: E402
from workshop import cgroups  # noqa: E402
from workshop.admission import available_memory  # noqa: E402

BUSY = ("import subprocess, sys\n"
        "procs = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range({n})]\n"
        "print(len(procs))")


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def login_latencies(url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        requests.get(f"{url}/hub/login", timeout=30).raise_for_status()
        out.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.1)
    return out


STOCK_CONFIG = Path(__file__).with_name("stock_jupyterhub_config.py")


def container_of(client, name):
    """The attendee's container: labelled by the workshop spawner, named jupyter-<user> by stock DockerSpawner."""
    found = client.containers.list(filters={"label": f"org.workshop.user={name}"})
    return found[0] if found else client.containers.get(f"jupyter-{name}")


def run_phase(label: str, boost: int, greedy: int, client, stock: bool = False) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-sat-{label}-"))
    command = [str(Path(sys.executable).with_name("jupyterhub")), "-f", str(STOCK_CONFIG)] if stock else None
    hub = start_hub(workdir, command=command, limits={"cpu": 1.0, "memory": "1G", "pids": 512},
                    capacity={"instructor_seats": 0, "cpu_overcommit": 16, "startup_cpu_shares": boost},
                    hub={"concurrent_spawn_limit": 20})
    what = "stock DockerSpawner (no limits, ceiling, boost or admission)" if stock else \
        f"workshop spawner, start-up cpu_shares {boost or 'off'}"
    print(f"[{label}] hub at {hub.url}: {what}", flush=True)
    result: dict = {"label": label, "startup_cpu_shares": boost, "failures": []}
    kernels = []
    try:
        users = [hub.new_attendee("busy")[:2] for _ in range(greedy)] + [hub.new_attendee("light")[:2]]
        for i, (name, _) in enumerate(users):
            hub.start_server(name)
            print(f"[{label}] attendee {i + 1}/{len(users)} ready", flush=True)
        for i, (name, _) in enumerate(users):
            k = Kernel(hub.server_url(name), hub.user_token(name))
            k.run(BUSY.format(n=1 if i == len(users) - 1 else 4))
            kernels.append(k)
        containers = {name: container_of(client, name) for name, _ in users}
        time.sleep(5)  # let the load settle

        mode = cgroups.detect()
        pids = {n: c.attrs["State"]["Pid"] for n, c in containers.items()}
        before = {n: cgroups.cpu_usage_ns(pid, mode) for n, pid in pids.items()}
        t0 = time.monotonic()
        latencies = login_latencies(hub.url, 50)
        late_name, late_password = new_user(hub, "late")
        late = time_to_ready(hub, late_name, late_password)
        elapsed = time.monotonic() - t0
        after = {n: cgroups.cpu_usage_ns(pid, mode) for n, pid in pids.items()}
        shares = {n: (after[n] - before[n]) / 1e9 / elapsed for n in containers}
        xs = list(shares.values())
        jain = sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))
        light = users[-1][0]
        result.update({
            "late_spawn_s": round(late, 2),
            "login_ms": {"p50": round(percentile(latencies, 50), 1), "p95": round(percentile(latencies, 95), 1),
                         "p99": round(percentile(latencies, 99), 1)},
            "cpu_per_attendee": {n: round(v, 3) for n, v in shares.items()},
            "cpu_total": round(sum(xs), 3),
            "light_attendee_cpu": round(shares[light], 3),
            "fair_share": round(sum(xs) / len(xs), 3),
            "jain_index": round(jain, 3),
            "available_memory_gib": round(available_memory() / 2**30, 1),
        })
        print(f"[{label}] late attendee ready after {late:.2f} s; login p50 {result['login_ms']['p50']} ms, "
              f"p95 {result['login_ms']['p95']} ms; Jain {jain:.3f}", flush=True)
    except Exception as e:
        result["failures"].append(f"{type(e).__name__}: {e}")
        print(f"[{label}] failed: {e}", flush=True)
    finally:
        for k in kernels:
            try:
                k.ws.close()
            except Exception:
                pass
        hub.stop()
        remove_user_objects(client, hub.created_users)
        for name in hub.created_users:  # stock DockerSpawner's containers carry no workshop labels
            try:
                client.containers.get(f"jupyter-{name}").remove(force=True)
            except docker.errors.NotFound:
                pass
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--greedy", type=int, default=9, help="attendees running 4 busy processes each")
    parser.add_argument("--boost", type=int, default=8192, help="start-up cpu_shares for the boosted phase")
    parser.add_argument("--phases", nargs="+", default=["workshop", "no-boost", "stock"],
                        choices=["workshop", "no-boost", "stock"], help="which configurations to run (default: all)")
    args = parser.parse_args()
    client = docker.from_env()
    runs = {"workshop": lambda: run_phase("workshop", args.boost, args.greedy, client),
            "no-boost": lambda: run_phase("no-boost", 0, args.greedy, client),
            "stock": lambda: run_phase("stock", 0, args.greedy, client, stock=True)}
    phases = [runs[name]() for name in args.phases]
    if args.phases != list(runs):
        print(json.dumps(phases, indent=2))
        return 1 if any(p["failures"] for p in phases) else 0
    print("\n| | workshop (boost on) | workshop, boost off | stock DockerSpawner |\n|---|---|---|---|")
    for key, fmt in (("late_spawn_s", "{} s"), ("jain_index", "{}"), ("cpu_total", "{} CPU"),
                     ("light_attendee_cpu", "{} CPU"), ("fair_share", "{} CPU")):
        print(f"| {key} | " + " | ".join(fmt.format(p.get(key)) for p in phases) + " |")
    for q in ("p50", "p95", "p99"):
        print(f"| login {q} | " + " | ".join(f"{p.get('login_ms', {}).get(q)} ms" for p in phases) + " |")
    ours, stock = phases[0].get("late_spawn_s"), phases[2].get("late_spawn_s")
    if ours and stock:
        print(f"\nlate spawn: workshop is {stock / ours:.1f}x faster than stock")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "bench_saturation.json").write_text(json.dumps(phases, indent=2))
    return 1 if any(p["failures"] for p in phases) else 0


if __name__ == "__main__":
    sys.exit(main())
