"""The attendee spawner: one hardened, resource-limited container per attendee.

A DockerSpawner subclass. Limits come from workshop.yaml through the hub
config mapping; this module only decides how a container is locked down:

- memory+swap equal to the memory limit (no swap), a pids limit;
- every capability dropped and no-new-privileges set;
- a non-root numeric uid of the attendee's own (uid_base + hub user id), so
  file ownership keeps attendees apart on shared mounts such as nbgrader's
  exchange;
- a named home volume that outlives the container;
- the server port published on 127.0.0.1 only (DockerSpawner's host_ip);
- inside the parent cgroup that caps all attendees together, with an equal
  CPU weight, and ahead of the hub in the OOM killer's line.
"""

from __future__ import annotations

import asyncio
import time

from dockerspawner import DockerSpawner
from jupyterhub.utils import wait_for_http_server
from traitlets import Integer, Unicode, default

from . import admission
from .cgroups import ATTENDEE_OOM_SCORE_ADJ

HOME_ROOT = "/home"


class WorkshopSpawner(DockerSpawner):
    """DockerSpawner with the workshop's per-attendee limits and hardening."""

    pids_limit = Integer(
        512,
        config=True,
        help="Maximum number of processes and threads in one attendee container (fork-bomb guard).",
    )

    uid_base = Integer(
        20000,
        config=True,
        help="Attendee containers run as uid (and gid) uid_base + the hub's numeric user id.",
    )

    home_volume_template = Unicode(
        "workshop-home-{username}",
        config=True,
        help="Name of the Docker volume holding an attendee's home; it survives container removal.",
    )

    cgroup_parent = Unicode(
        "",
        config=True,
        help="Docker cgroup_parent of attendee containers: the group capping all attendees together "
             "(set from cgroups.ensure_parent's answer); empty leaves Docker's default.",
    )

    cpu_shares = Integer(
        1024,
        config=True,
        help="CPU weight of every attendee container; equal weights split the parent's quota evenly among busy attendees.",
    )

    startup_cpu_shares = Integer(
        8192,
        config=True,
        help="CPU weight of a container while its server starts (8x the normal 1024 by default), so a late "
             "attendee starts quickly on a busy host; dropped to cpu_shares once the server answers. "
             "0 turns the boost off.",
    )

    startup_boost_seconds = Integer(
        120,
        config=True,
        help="Longest time a start-up boost lasts if the server never answers.",
    )

    oom_score_adj = Integer(
        ATTENDEE_OOM_SCORE_ADJ,
        config=True,
        help="OOM-killer bias of attendee containers; positive so that the kernel kills them before the hub.",
    )

    attendee_seats = Integer(
        -1,
        config=True,
        help="Attendee servers that may run at once (from the capacity model); -1 turns the seat check off.",
    )

    min_free_memory = Integer(
        0,
        config=True,
        help="Bytes of available host memory below which no new attendee server starts; 0 turns it off.",
    )

    @default("prefix")
    def _default_prefix(self):
        return "workshop"

    @default("remove")
    def _default_remove(self):
        # Containers are disposable; the home volume is what persists.
        return True

    @default("use_internal_ip")
    def _default_use_internal_ip(self):
        # Publish on the host's loopback instead: the proxy reaches the server
        # there, and nothing on the bridge needs to reach it.
        return False

    @default("host_ip")
    def _default_host_ip(self):
        return "127.0.0.1"

    @default("volumes")
    def _default_volumes(self):
        # nocopy: otherwise Docker stamps the (root-owned) working directory's
        # ownership onto a still-empty volume, undoing the hand-over below.
        return {self.home_volume_template: {"bind": self.home_dir, "mode": "rw,nocopy"}}

    @default("notebook_dir")
    def _default_notebook_dir(self):
        return self.home_dir

    @default("extra_host_config")
    def _default_extra_host_config(self):
        return self.hardened_host_config

    @default("extra_create_kwargs")
    def _default_extra_create_kwargs(self):
        return self.identity_create_kwargs

    @property
    def uid(self) -> int:
        """Numeric uid (and gid) this attendee's processes run as."""
        return self.uid_base + self.user.id

    @property
    def home_dir(self) -> str:
        return f"{HOME_ROOT}/{self.user.name}"

    @property
    def home_volume(self) -> str:
        return self.format_volume_name(self.home_volume_template, self)

    def hardened_host_config(self, spawner=None) -> dict:
        """Host-config settings that bound and lock down the container."""
        config = {
            "pids_limit": self.pids_limit,
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            "init": False,  # the image runs tini as PID 1 itself
            "cpu_shares": self.cpu_weight(),
            "oom_score_adj": self.oom_score_adj,
        }
        if self.cgroup_parent:
            config["cgroup_parent"] = self.cgroup_parent
        if self.mem_limit:
            # Equal memory and memory+swap: the container gets no swap at all.
            config["memswap_limit"] = self.mem_limit
        return config

    def cpu_weight(self) -> int:
        """The CPU weight this container starts with: boosted until its server answers."""
        return max(self.cpu_shares, self.startup_cpu_shares)

    async def poll(self):
        status = await super().poll()
        if status is None and not self._weight_checked and self._boost_task is None:
            # First look at a running server this hub process did not start
            # (e.g. after a hub restart): a boost cut short by the restart ends here.
            self._weight_checked = True
            obj = await self.get_object()
            if obj and obj["HostConfig"].get("CpuShares") != self.cpu_shares:
                await self.docker("update_container", self.container_id, cpu_shares=self.cpu_shares)
                self.log.info("reset CPU weight of %s to %d", self.user.name, self.cpu_shares)
        return status

    _weight_checked = False
    _boost_task = None

    async def _end_startup_boost(self, ip: str, port: int) -> None:
        """Wait until the new server answers (or the boost times out), then drop to the normal weight."""
        started = time.monotonic()
        url = f"http://{ip}:{port}{self.server.base_url if self.server else '/'}api"
        try:
            await wait_for_http_server(url, timeout=self.startup_boost_seconds)
        except Exception as e:  # timeout or connection trouble: the boost ends either way
            self.log.info("start-up boost of %s ends without an answer from %s: %s", self.user.name, url, e)
        try:
            await self.docker("update_container", self.container_id, cpu_shares=self.cpu_shares)
            self.log.info("start-up boost of %s over after %.1f s: cpu_shares %d -> %d",
                          self.user.name, time.monotonic() - started, self.cpu_weight(), self.cpu_shares)
        except Exception as e:  # the container may be gone already
            self.log.info("start-up boost of %s not lowered (%s)", self.user.name, e)

    def identity_create_kwargs(self, spawner=None) -> dict:
        """Run as the attendee's own uid, in their home directory."""
        return {
            "user": f"{self.uid}:{self.uid}",
            "working_dir": self.home_dir,
            "labels": {
                "org.workshop.role": "attendee",
                "org.workshop.user": self.user.name,
            },
        }

    def get_env(self):
        env = super().get_env()
        env.update(
            NB_USER=self.user.name,
            HOME=self.home_dir,
            NB_UID=str(self.uid),
        )
        return env

    async def start(self):
        self.admit()
        ip, port = await super().start()
        if self.cpu_weight() != self.cpu_shares:
            self._boost_task = asyncio.ensure_future(self._end_startup_boost(ip, port))
        return ip, port

    def admit(self) -> None:
        """Raise the refusal page's error if admission control turns this spawn away."""
        if self.attendee_seats < 0 and not self.min_free_memory:
            return
        request = admission.Request(
            username=self.user.name,
            is_instructor=bool(self.user.admin),
            active_attendee_servers=admission.active_attendee_servers(self.user.settings["users"], self.user.name),
            available_memory=admission.available_memory(),
        )
        seats = self.attendee_seats if self.attendee_seats >= 0 else None
        refusal = admission.decide(request, seats, self.min_free_memory)
        if refusal is not None:
            admission.REFUSALS.labels(reason=refusal.reason_code).inc()
            self.log.warning("admission refused %s (%s): %s", self.user.name, refusal.reason_code,
                             refusal.jupyterhub_message)
            raise refusal

    async def create_object(self):
        await self._prepare_home_volume()
        return await super().create_object()

    async def _prepare_home_volume(self):
        """Create the home volume owned by the attendee's uid, once."""
        name = self.home_volume
        volumes = await self.docker("volumes", filters={"name": name})
        existing = [v for v in (volumes.get("Volumes") or []) if v["Name"] == name]
        if existing and existing[0].get("Labels", {}).get("org.workshop.uid") == str(self.uid):
            return
        if not existing:
            await self.docker(
                "create_volume",
                name=name,
                labels={"org.workshop.user": self.user.name, "org.workshop.uid": str(self.uid)},
            )
        # A new volume is root-owned. A short-lived container with only the
        # capabilities needed hands it to the attendee; it has no network.
        script = f"chmod 0700 /mnt/home && chown -R {self.uid}:{self.uid} /mnt/home"
        host_config = self.client.create_host_config(
            binds={name: {"bind": "/mnt/home", "mode": "rw"}},
            cap_drop=["ALL"],
            cap_add=["CHOWN", "FOWNER"],
            security_opt=["no-new-privileges"],
            network_mode="none",
        )
        container = await self.docker(
            "create_container",
            image=self.image,
            entrypoint=["/bin/sh", "-c"],
            command=[script],
            user="0:0",
            host_config=host_config,
            labels={"org.workshop.role": "home-setup"},
        )
        try:
            await self.docker("start", container["Id"])
            result = await self.docker("wait", container["Id"], timeout=60)
            if result.get("StatusCode") != 0:
                logs = await self.docker("logs", container["Id"])
                raise RuntimeError(f"preparing home volume {name} failed: {logs.decode(errors='replace')}")
        finally:
            await self.docker("remove_container", container["Id"], force=True)
        if existing:
            self.log.warning("home volume %s had another owner; handed it to uid %s", name, self.uid)
        self.log.info("home volume %s ready for uid %s", name, self.uid)
