"""The `workshop` command: run, inspect, check and build the workshop server."""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

from . import config as configmod
from .config import ConfigError, HostFacts, WorkshopConfig, format_size
from .state import state_for

OK, FAIL, WARN = "ok  ", "FAIL", "warn"
SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")


def _load(args, check_host: bool = True) -> WorkshopConfig:
    host = HostFacts.detect() if check_host else None
    return configmod.load(args.config, host=host)


def _docker_client():
    import docker

    try:
        client = docker.from_env(timeout=30)
        client.ping()
        return client
    except Exception as e:  # docker raises several unrelated types here
        raise SystemExit(
            f"error: the Docker engine is not reachable ({e.__class__.__name__}: {e}).\n"
            "Start it (`systemctl start docker`, or `dockerd &` where systemd is not running) "
            "and check that you may use /var/run/docker.sock (run as root or join the docker group)."
        ) from None


def _image_status(client, cfg: WorkshopConfig) -> tuple[bool, str]:
    import docker

    from . import image as imagemod

    try:
        img = client.images.get(cfg.image.name)
    except docker.errors.ImageNotFound:
        return False, f"attendee image {cfg.image.name} is not built; run `workshop build-image`"
    built = (img.labels or {}).get(imagemod.HASH_LABEL)
    want = imagemod.inputs_hash(cfg.image.base)
    if built != want:
        return True, f"attendee image {cfg.image.name} is built but older than images/attendee; run `workshop build-image`"
    return True, f"attendee image {cfg.image.name} is built and up to date"


def _port_free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip or "0.0.0.0", port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _cgroup_checks(cfg: WorkshopConfig, plan) -> list[tuple[str, str]]:
    """Verdicts on the attendees' parent cgroup and the hub's OOM protection."""
    from . import cgroups

    verdicts = {"ok": OK, "warn": WARN, "fail": FAIL}
    return [(verdicts[v], msg) for v, msg in cgroups.check(cfg, plan)]


def _prepare_host_resources(cfg: WorkshopConfig) -> None:
    """Cap all attendees together in their parent cgroup; put the hub last in the OOM killer's line."""
    from . import capacity, cgroups

    try:
        cgroups.ensure_parent(cfg, capacity.plan(cfg, HostFacts.detect()))
    except cgroups.CgroupError as e:
        raise SystemExit(f"error: {e}") from None
    # Set on this process, it survives the exec and is inherited by the proxy and services.
    warning = cgroups.protect_from_oom()
    if warning:
        print(f"warning: {warning}", file=sys.stderr, flush=True)


def cmd_check(args) -> int:
    """Preflight: every check prints a verdict; exit 1 if any failed."""
    results: list[tuple[str, str]] = []
    try:
        cfg = _load(args)
        results.append((OK, f"{args.config} is valid; limits {cfg.limits.cpu:g} CPU, "
                            f"{format_size(cfg.limits.memory)} RAM, {cfg.limits.pids} pids per attendee fit this host"))
    except ConfigError as e:
        print(f"[{FAIL}] {e}")
        return 1
    from . import capacity

    cap = capacity.plan(cfg, HostFacts.detect())
    fits, message = capacity.event_fits(cfg, cap)
    results.append((OK if fits else WARN, f"capacity: {cap.seats} seats ({cap.bound} bound), "
                                          f"{cap.attendee_seats} for attendees; {message}"))
    try:
        client = _docker_client()
        results.append((OK, f"Docker engine reachable (server {client.version().get('Version')})"))
        present, msg = _image_status(client, cfg)
        results.append((OK if "up to date" in msg else (WARN if present else FAIL), msg))
        results += _cgroup_checks(cfg, cap)
    except SystemExit as e:
        results.append((FAIL, str(e).removeprefix("error: ")))
    chp = shutil.which("configurable-http-proxy")
    results.append((OK, f"configurable-http-proxy found at {chp}") if chp else
                   (FAIL, "configurable-http-proxy is not on PATH; install it with `npm install -g configurable-http-proxy`"))
    if _port_free(cfg.hub.ip, cfg.hub.port):
        results.append((OK, f"port {cfg.hub.port} on {cfg.hub.ip or '*'} is free"))
    else:
        results.append((FAIL, f"port {cfg.hub.port} on {cfg.hub.ip or '*'} is in use (is the hub already running? "
                              "`workshop status` tells); or set hub.port"))
    try:
        state = state_for(cfg)
        results.append((OK, f"state directory {state.root} is writable"))
    except OSError as e:
        results.append((FAIL, f"state directory {cfg.hub.state_dir} is not usable: {e}"))
    for verdict, msg in results:
        print(f"[{verdict}] {msg}")
    failed = sum(v == FAIL for v, _ in results)
    print(f"\n{'all checks passed' if not failed else f'{failed} check(s) failed'}")
    return 1 if failed else 0


def cmd_capacity(args) -> int:
    """How many attendees this host holds, with the arithmetic, and common hosts."""
    from . import capacity

    cfg = _load(args)
    print(capacity.report(cfg, HostFacts.detect()))
    return 0


def cmd_build_image(args) -> int:
    """Build the attendee image (skipped when its inputs are unchanged)."""
    from . import image as imagemod

    cfg = _load(args, check_host=False)
    # Hosts behind a TLS-intercepting proxy already trust its CA, through
    # pip's or requests' settings or the system store; the build reuses that.
    # On other hosts the system store is just the public CAs, so this is harmless.
    ca = (args.ca_bundle or cfg.image.ca_bundle or os.environ.get("PIP_CERT")
          or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
          or next((p for p in SYSTEM_CA_BUNDLES if Path(p).is_file()), None))
    if ca and not Path(ca).is_file():
        raise SystemExit(f"error: CA bundle {ca} is not a file; pass --ca-bundle PATH or unset PIP_CERT")
    _docker_client()
    imagemod.build_image(cfg.image.name, cfg.image.base, ca_bundle=Path(ca) if ca else None, force=args.force)
    return 0


def cmd_up(args) -> int:
    """Run the hub in the foreground."""
    from . import network

    cfg = _load(args)
    state = state_for(cfg)
    client = _docker_client()
    present, msg = _image_status(client, cfg)
    if not present:
        raise SystemExit(f"error: {msg}")
    if not shutil.which("configurable-http-proxy"):
        raise SystemExit("error: configurable-http-proxy is not on PATH; install it with "
                         "`npm install -g configurable-http-proxy`")
    network.ensure_attendee_network(client, cfg.hub.network)
    if not _port_free(cfg.hub.ip, cfg.hub.port):
        raise SystemExit(f"error: port {cfg.hub.port} on {cfg.hub.ip} is in use; is the hub already running? "
                         "Stop it, or set hub.port in workshop.yaml")
    _prepare_host_resources(cfg)

    code = state.access_code(cfg)
    lines = [
        f"{cfg.event.name}",
        f"  Open:         {cfg.public_url}",
        f"  Event code:   {code}   (attendees sign up at {cfg.public_url}/hub/signup)",
    ]
    for name, password in state.instructor_passwords(cfg).items():
        lines.append(f"  Instructor:   {name} / {password}")
    lines.append(f"  State:        {state.root}")
    width = max(len(line) for line in lines) + 2
    print("=" * width + "\n" + "\n".join(lines) + "\n" + "=" * width, flush=True)

    hub_config = Path(__file__).with_name("jupyterhub_config.py")
    jupyterhub = str(Path(sys.executable).with_name("jupyterhub"))
    env = dict(os.environ, WORKSHOP_CONFIG=str(cfg.source))
    os.chdir(state.root)
    os.execve(jupyterhub, [jupyterhub, "-f", str(hub_config)], env)
    return 0  # pragma: no cover - exec does not return


def _api(cfg: WorkshopConfig, token: str, path: str):
    req = urllib.request.Request(f"{cfg.public_url}/hub/api{path}",
                                 headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def cmd_status(args) -> int:
    """Show whether the hub answers, and every attendee's server."""
    cfg = _load(args, check_host=False)
    state = state_for(cfg)
    try:
        info = _api(cfg, state.admin_token, "/")
        print(f"hub:        up at {cfg.public_url} (JupyterHub {info.get('version')})")
        users = _api(cfg, state.admin_token, "/users")
    except (urllib.error.URLError, OSError) as e:
        print(f"hub:        not answering at {cfg.public_url} ({getattr(e, 'reason', e)}); start it with `workshop up`")
        return 1
    running = [u for u in users if u.get("servers")]
    print(f"attendees:  {len(users)} registered, {len(running)} with a running server")
    if users:
        print(f"\n{'user':<20} {'admin':<6} {'server':<10} last activity")
        for u in sorted(users, key=lambda u: u["name"]):
            server = u.get("servers", {}).get("")
            status = "-" if not server else ("ready" if server.get("ready") else (server.get("pending") or "starting"))
            print(f"{u['name']:<20} {'yes' if u.get('admin') else '':<6} {status:<10} {u.get('last_activity') or '-'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workshop", description=__doc__)
    parser.add_argument("-c", "--config", default=os.environ.get("WORKSHOP_CONFIG", "workshop.yaml"),
                        help="path of workshop.yaml (default: ./workshop.yaml or $WORKSHOP_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run the hub in the foreground").set_defaults(func=cmd_up)
    sub.add_parser("status", help="show the hub and attendee servers").set_defaults(func=cmd_status)
    sub.add_parser("check", help="preflight checks with a verdict each").set_defaults(func=cmd_check)
    sub.add_parser("capacity", help="seats this host holds, with the reasoning").set_defaults(func=cmd_capacity)
    b = sub.add_parser("build-image", help="build the attendee image")
    b.add_argument("--ca-bundle", help="PEM CA bundle for a TLS-intercepting proxy (default: image.ca_bundle, then $PIP_CERT, $REQUESTS_CA_BUNDLE, $SSL_CERT_FILE, then the system CA store)")
    b.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    b.set_defaults(func=cmd_build_image)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
