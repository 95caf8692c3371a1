"""The Docker bridge network attendee containers live on.

Inter-container communication is switched off on this bridge, so one
attendee's container cannot open a connection to another's. Containers can
still reach the host's gateway address, where the hub API listens.
"""

from __future__ import annotations

import docker

ICC_OPTION = "com.docker.network.bridge.enable_icc"
LABEL = "org.workshop.role"


class NetworkError(RuntimeError):
    """The attendee network is missing or set up unsafely."""


def ensure_attendee_network(client: docker.DockerClient, name: str) -> str:
    """Create the attendee bridge (ICC off) if needed and return its gateway IP."""
    try:
        net = client.networks.get(name)
    except docker.errors.NotFound:
        net = client.networks.create(
            name,
            driver="bridge",
            options={ICC_OPTION: "false"},
            labels={LABEL: "attendee-network"},
        )
        net.reload()
    options = net.attrs.get("Options") or {}
    if options.get(ICC_OPTION) != "false":
        raise NetworkError(
            f"docker network {name!r} exists but lets containers talk to each other "
            f"({ICC_OPTION} is not false); remove it with `docker network rm {name}` "
            "(after stopping attendee servers) and start the hub again"
        )
    return gateway_ip(net)


def gateway_ip(net) -> str:
    """The host-side address of a bridge network."""
    for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
        gw = cfg.get("Gateway")
        if gw:
            return gw
    raise NetworkError(f"docker network {net.name!r} has no gateway address; recreate it")


def host_local_addresses() -> list[str]:
    """Every IPv4 address assigned to this host's interfaces (from /proc/net/fib_trie)."""
    found: list[str] = []
    last = None
    try:
        with open("/proc/net/fib_trie") as f:
            for line in f:
                text = line.strip()
                if text.startswith("|--"):
                    last = text[3:].strip()
                elif "/32 host LOCAL" in text and last and last not in found:
                    found.append(last)
    except OSError:
        pass
    return found
