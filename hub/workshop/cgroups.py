"""The parent cgroup that holds every attendee container, and whom the OOM killer picks.

Per-container limits keep one attendee from starving another; this parent keeps
all of them together from starving the hub, the proxy and sshd. Its CPU quota
and memory limit are the capacity plan's `attendee_cpu` and `attendee_memory`.

Three layouts occur, told apart by what Docker reports (`docker info`) and
what is mounted:

- cgroup v1, Docker's cgroupfs driver (this project's test machines): one
  directory per controller hierarchy, written here directly; Docker is given
  "/<name>".
- cgroup v2, cgroupfs driver: one directory in the unified hierarchy, written
  here directly; Docker is given "/<name>".
- systemd driver (cgroup v2 on Ubuntu 22.04+ and Debian 12 hosts): systemd owns
  the tree, so the parent is the slice "<name>.slice". The Ansible role installs
  it as a unit file; failing that, systemd is asked to set its properties, and
  without a running systemd the error says which unit file to write.

Every function checks before it writes, so running it again changes nothing.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .config import WorkshopConfig, format_size

CFS_PERIOD_US = 100_000
# The hub and its proxy children should be the last thing the kernel kills when
# the host itself runs out of memory, attendee containers the first.
HUB_OOM_SCORE_ADJ = -900
ATTENDEE_OOM_SCORE_ADJ = 500
CAP_SYS_RESOURCE = 24
UNLIMITED_V1 = 9223372036854771712  # what v1 memory files read when unlimited (LONG_MAX rounded to a page)


class CgroupError(RuntimeError):
    """A cgroup problem, phrased with the file, the value and the fix."""


@dataclass(frozen=True)
class CgroupMode:
    """How this host's cgroups are laid out, and who manages the attendees' parent."""

    version: int  # 1 or 2: the hierarchy Docker puts containers in
    driver: str  # Docker's cgroup driver: "cgroupfs" or "systemd"
    mounts: Mapping[str, Path] = field(default_factory=dict)  # v1: controller -> mount; v2: {"unified": root}
    systemd_booted: bool = False

    @property
    def description(self) -> str:
        """One line for `workshop check`."""
        where = "systemd slice" if self.driver == "systemd" else "cgroupfs directory"
        return f"cgroup v{self.version} with Docker's {self.driver} driver (attendees' parent is a {where})"

    def relative_path(self, cfg: WorkshopConfig) -> str:
        """The parent's path below each hierarchy's root, without a leading slash."""
        if self.driver == "systemd":
            return _slice_path(slice_name(cfg))
        return cfg.capacity.cgroup_parent

    def directories(self, cfg: WorkshopConfig) -> dict[str, Path]:
        """The parent's directory for the cpu and the memory controller (one and the same on v2)."""
        rel = self.relative_path(cfg)
        if self.version == 2:
            root = self.mounts["unified"]
            return {"cpu": root / rel, "memory": root / rel}
        return {c: self.mounts[c] / rel for c in ("cpu", "memory")}


def detect(info: Mapping[str, Any] | None = None) -> CgroupMode:
    """Which cgroup layout applies here, from Docker's own report and the mounted hierarchies."""
    if info is None:
        info = _docker_info()
    driver = info.get("CgroupDriver") or "cgroupfs"
    if driver not in ("cgroupfs", "systemd"):
        raise CgroupError(f"Docker reports cgroup driver {driver!r}; attendee limits need 'cgroupfs' or 'systemd' "
                          "(rootless Docker without cgroup delegation cannot enforce them); run Docker as root")
    v1, v2 = _cgroup_mounts()
    version = int(info.get("CgroupVersion") or (2 if Path("/sys/fs/cgroup/cgroup.controllers").exists() else 1))
    if version == 2:
        if not v2:
            raise CgroupError("Docker reports cgroup v2, but no cgroup2 filesystem is mounted; "
                              "mount it at /sys/fs/cgroup (mount -t cgroup2 none /sys/fs/cgroup)")
        root = Path("/sys/fs/cgroup") if Path("/sys/fs/cgroup") in v2 else v2[0]
        mounts: dict[str, Path] = {"unified": root}
    else:
        missing = [c for c in ("cpu", "memory") if c not in v1]
        if missing:
            raise CgroupError(f"Docker reports cgroup v1, but no hierarchy with the {' and '.join(missing)} "
                              "controller is mounted; mount it under /sys/fs/cgroup (Docker needs it too)")
        # cpuacct too where mounted: CPU accounting (cpu_usage_ns) reads it.
        mounts = {c: v1[c] for c in ("cpu", "memory", "cpuacct") if c in v1}
    return CgroupMode(version=version, driver=driver, mounts=mounts,
                      systemd_booted=Path("/run/systemd/system").is_dir())


def docker_parent(cfg: WorkshopConfig, mode: CgroupMode) -> str:
    """The `cgroup_parent` value Docker needs for this layout."""
    if mode.driver == "systemd":
        return slice_name(cfg)
    return "/" + cfg.capacity.cgroup_parent


def slice_name(cfg: WorkshopConfig) -> str:
    """The systemd slice unit that is the attendees' parent."""
    name = cfg.capacity.cgroup_parent
    return name if name.endswith(".slice") else f"{name}.slice"


def slice_unit(cfg: WorkshopConfig, capacity, mode: CgroupMode | None = None) -> str:
    """The unit file that makes the attendees' slice under systemd."""
    lines = [
        "[Unit]",
        "Description=All workshop attendee containers together",
        "",
        "[Slice]",
        f"CPUQuota={_quota_us(capacity) / 1000:g}%",
        f"MemoryMax={_memory_bytes(capacity)}",
    ]
    if mode is None or mode.version == 2:
        lines.append("MemorySwapMax=0")
    return "\n".join(lines) + "\n"


def ensure_parent(cfg: WorkshopConfig, capacity, mode: CgroupMode | None = None) -> str:
    """Create or update the attendees' parent cgroup with the plan's caps; return Docker's `cgroup_parent`."""
    mode = mode or detect()
    _check_fits(cfg, capacity, mode)
    if mode.driver == "systemd":
        _ensure_slice(cfg, capacity, mode)
        return docker_parent(cfg, mode)
    for directory in mode.directories(cfg).values():
        if not directory.is_dir():
            try:
                directory.mkdir(parents=True)
            except OSError as e:
                raise CgroupError(_explain(e, f"cannot create the cgroup {directory}")) from None
    if mode.version == 2:
        _enable_controllers(mode.mounts["unified"], ("cpu", "memory", "pids"))
    for path, value in _pending(cfg, capacity, mode):
        _write(path, value)
    return docker_parent(cfg, mode)


def current_caps(cfg: WorkshopConfig, mode: CgroupMode) -> tuple[float | None, int | None] | None:
    """The parent's CPU cap (cores) and memory cap (bytes) as the kernel has them; None if it does not exist."""
    dirs = mode.directories(cfg)
    if not all(d.is_dir() for d in dirs.values()):
        return None
    if mode.version == 2:
        quota, _, period = (_read(dirs["cpu"] / "cpu.max") or "max").partition(" ")
        memory = _read(dirs["memory"] / "memory.max") or "max"
        cpus = None if quota == "max" else int(quota) / int(period or CFS_PERIOD_US)
        return cpus, None if memory == "max" else int(memory)
    quota = int(_read(dirs["cpu"] / "cpu.cfs_quota_us") or -1)
    period = int(_read(dirs["cpu"] / "cpu.cfs_period_us") or CFS_PERIOD_US)
    memory = int(_read(dirs["memory"] / "memory.limit_in_bytes") or UNLIMITED_V1)
    return (None if quota < 0 else quota / period), (None if memory >= UNLIMITED_V1 else memory)


def check(cfg: WorkshopConfig, capacity, mode: CgroupMode | None = None) -> list[tuple[str, str]]:
    """Verdicts ("ok", "warn" or "fail", message) on the cgroup layout, the parent and OOM protection."""
    try:
        mode = mode or detect()
        _check_fits(cfg, capacity, mode)
    except CgroupError as e:
        return [("fail", str(e))]
    parent = docker_parent(cfg, mode)
    want = f"{_quota_us(capacity) / CFS_PERIOD_US:g} CPU and {format_size(_memory_bytes(capacity))} RAM"
    caps = current_caps(cfg, mode)
    pending = _pending(cfg, capacity, mode) if caps is not None else None
    fixable = mode.driver != "systemd" or mode.systemd_booted
    if caps is not None and not pending:
        verdict = ("ok", f"{mode.description}: parent {parent} caps all attendees at {want}")
    else:
        have = "does not exist yet" if caps is None else f"has {_describe_caps(caps)}"
        fix = "creates it with" if caps is None else "sets it to"
        if fixable:
            verdict = ("warn", f"{mode.description}: parent {parent} {have}; `workshop up` {fix} {want}")
        else:
            verdict = ("fail", f"{mode.description}: parent {parent} {have}; {_slice_instructions(cfg, capacity, mode)}")
    oom = ("ok", f"the hub can protect itself from the OOM killer (oom_score_adj {HUB_OOM_SCORE_ADJ}); "
                 f"attendee containers get {ATTENDEE_OOM_SCORE_ADJ}")
    if not can_lower_oom_score():
        oom = ("warn", f"the hub cannot lower its oom_score_adj here (no CAP_SYS_RESOURCE); it stays at 0 and only "
                       f"attendee containers' {ATTENDEE_OOM_SCORE_ADJ} makes the kernel pick them first")
    return [verdict, oom]


def cpu_usage_ns(pid: int, mode: CgroupMode) -> int:
    """CPU time used so far by the cgroup process `pid` is in (its container), in nanoseconds."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if mode.version == 2 and controllers == "":
            for stat in (mode.mounts["unified"] / rel / "cpu.stat").read_text().splitlines():
                key, value = stat.split()
                if key == "usage_usec":
                    return int(value) * 1000
        elif mode.version == 1 and "cpuacct" in controllers.split(",") and "cpuacct" in mode.mounts:
            return int((mode.mounts["cpuacct"] / rel / "cpuacct.usage").read_text())
    raise CgroupError(f"no CPU accounting found for process {pid}")


def protect_from_oom(pid: int | str = "self", score: int = HUB_OOM_SCORE_ADJ) -> str | None:
    """Set a process's oom_score_adj (children inherit it); return a warning if the kernel refused."""
    path = Path(f"/proc/{pid}/oom_score_adj")
    try:
        if _read(path) == str(score):
            return None
        # One write() call: the kernel reports EACCES there, which a buffered
        # file object would lose on close.
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, str(score).encode())
        finally:
            os.close(fd)
    except OSError as e:
        why = ("lowering it needs CAP_SYS_RESOURCE, which this host or container does not grant"
               if e.errno in (errno.EACCES, errno.EPERM) else e.strerror)
        return (f"could not set {path} to {score}: {why}; the hub keeps its default score, and only the "
                f"attendee containers' oom_score_adj {ATTENDEE_OOM_SCORE_ADJ} makes the kernel kill them first")
    return None


# --- internals ------------------------------------------------------------

def _docker_info() -> Mapping[str, Any]:
    import docker

    try:
        return docker.from_env(timeout=30).info()
    except Exception as e:  # docker raises several unrelated types here
        raise CgroupError(f"cannot ask Docker which cgroup driver it uses ({e.__class__.__name__}: {e}); "
                          "start the Docker engine and run as root") from None


def _cgroup_mounts() -> tuple[dict[str, Path], list[Path]]:
    """v1 controller -> mount point, and every cgroup2 mount point."""
    v1: dict[str, Path] = {}
    v2: list[Path] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _, options = (right.split() + ["", "", ""])[:3]
            mount_point = Path(left.split()[4].replace("\\040", " "))
            if fstype == "cgroup2":
                v2.append(mount_point)
            elif fstype == "cgroup":
                for option in options.split(","):
                    v1.setdefault(option, mount_point)
    return v1, v2


def _slice_path(unit: str) -> str:
    """systemd nests slices by their dashes: a-b.slice lives in a.slice/a-b.slice."""
    stem = unit.removesuffix(".slice")
    parts = stem.split("-")
    if not all(parts):
        raise CgroupError(f"capacity.cgroup_parent: {stem!r} is not a valid systemd slice name (no leading, "
                          "trailing or doubled '-'); use e.g. workshop-attendees")
    return "/".join("-".join(parts[:i + 1]) + ".slice" for i in range(len(parts)))


def _quota_us(capacity) -> int:
    # Whole hundredths of a percent, so systemd's CPUQuota= can state it exactly.
    return round(capacity.attendee_cpu * 10_000) * (CFS_PERIOD_US // 10_000)


def _memory_bytes(capacity) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    return int(capacity.attendee_memory) // page * page  # the kernel keeps limits in whole pages


def _check_fits(cfg: WorkshopConfig, capacity, mode: CgroupMode) -> None:
    if capacity.attendee_cpu <= 0 or capacity.attendee_memory <= 0:
        raise CgroupError(f"the capacity plan leaves attendees {capacity.attendee_cpu:g} CPU and "
                          f"{format_size(max(0, int(capacity.attendee_memory)))} RAM; lower capacity.reserve_cpu "
                          "or capacity.reserve_memory")
    if mode.version == 1 and cfg.limits.cpu * CFS_PERIOD_US > _quota_us(capacity):
        # The v1 kernel refuses a child quota above its parent's, so every spawn would fail.
        raise CgroupError(f"limits.cpu: {cfg.limits.cpu:g} is more than the {capacity.attendee_cpu:g} cores all "
                          "attendees share (host cores minus capacity.reserve_cpu); cgroup v1 refuses a container "
                          f"quota above its parent's, so lower limits.cpu to {capacity.attendee_cpu:g} or less, "
                          "or lower capacity.reserve_cpu")


def _pending(cfg: WorkshopConfig, capacity, mode: CgroupMode) -> list[tuple[Path, str]]:
    """The (file, value) writes still needed, in an order the kernel accepts."""
    dirs = mode.directories(cfg)
    quota, memory = _quota_us(capacity), _memory_bytes(capacity)
    if mode.version == 2:
        wanted = [(dirs["cpu"] / "cpu.max", f"{quota} {CFS_PERIOD_US}"),
                  (dirs["memory"] / "memory.max", str(memory))]
        if (dirs["memory"] / "memory.swap.max").exists():  # absent when swap accounting is off
            wanted.append((dirs["memory"] / "memory.swap.max", "0"))
    else:
        cpu, mem = dirs["cpu"], dirs["memory"]
        wanted = [(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US)), (cpu / "cpu.cfs_quota_us", str(quota))]
        if (mem / "memory.use_hierarchy").exists():
            # Without it (old kernels) the parent's limit would not cover its children.
            wanted.append((mem / "memory.use_hierarchy", "1"))
        limit = [(mem / "memory.limit_in_bytes", str(memory))]
        if mode.driver != "systemd" and (mem / "memory.memsw.limit_in_bytes").exists():
            # memory+swap may never be below memory: raise it first, lower it last.
            swap = [(mem / "memory.memsw.limit_in_bytes", str(memory))]
            current = int(_read(mem / "memory.limit_in_bytes") or UNLIMITED_V1)
            limit = swap + limit if memory > current else limit + swap
        wanted += limit
    return [(path, value) for path, value in wanted if _read(path) != value]


def _ensure_slice(cfg: WorkshopConfig, capacity, mode: CgroupMode) -> None:
    """Under systemd the slice is systemd's; ask it for the caps, or say which unit to install."""
    exists = current_caps(cfg, mode) is not None
    if exists and not _pending(cfg, capacity, mode):
        return
    unit = slice_name(cfg)
    if not mode.systemd_booted or not shutil.which("systemctl"):
        raise CgroupError(f"the attendees' slice {unit} {'lacks the planned caps' if exists else 'does not exist'} "
                          f"and systemd is not running here to fix it; {_slice_instructions(cfg, capacity, mode)}")
    props = [f"CPUQuota={_quota_us(capacity) / 1000:g}%", f"MemoryMax={_memory_bytes(capacity)}"]
    if mode.version == 2:
        props.append("MemorySwapMax=0")
    # set-property persists the caps as a drop-in; starting the slice makes its cgroup now.
    for command in (["systemctl", "set-property", unit, *props], ["systemctl", "start", unit]):
        r = subprocess.run(command, capture_output=True, text=True)
        if r.returncode != 0:
            raise CgroupError(f"`{' '.join(command)}` failed: {(r.stderr or r.stdout).strip()}; "
                              f"{_slice_instructions(cfg, capacity, mode)}")
    still = _pending(cfg, capacity, mode)
    if still:
        path, value = still[0]
        raise CgroupError(f"systemd set the properties of {unit}, but {path} reads {_read(path)!r} instead of "
                          f"{value!r}; check `systemctl show {unit}` for a drop-in overriding them")


def _slice_instructions(cfg: WorkshopConfig, capacity, mode: CgroupMode) -> str:
    unit = slice_name(cfg)
    body = "\n".join(f"    {line}".rstrip() for line in slice_unit(cfg, capacity, mode).splitlines())
    return (f"create /etc/systemd/system/{unit} (the Ansible role does) with:\n{body}\n"
            f"then run `systemctl daemon-reload && systemctl start {unit}`")


def _enable_controllers(root: Path, controllers: tuple[str, ...]) -> None:
    control = root / "cgroup.subtree_control"
    enabled = set((_read(control) or "").split())
    missing = [c for c in controllers if c not in enabled]
    if missing:
        _write(control, " ".join(f"+{c}" for c in missing))


def _describe_caps(caps: tuple[float | None, int | None]) -> str:
    cpus, memory = caps
    return (f"{'no CPU cap' if cpus is None else f'{cpus:g} CPU'} and "
            f"{'no memory cap' if memory is None else format_size(memory) + ' RAM'}")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        return None


def _write(path: Path, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise CgroupError(_explain(e, f"cannot write {value} to {path}")) from None


def _explain(e: OSError, what: str) -> str:
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"{what}: permission denied; run `workshop up` as root (cgroup files belong to root)"
    if e.errno == errno.EROFS:
        return (f"{what}: the cgroup filesystem is mounted read-only (inside a container?); "
                "run the hub on the host or mount /sys/fs/cgroup read-write")
    if e.errno == errno.EINVAL and "cpu" in what:
        return (f"{what}: the kernel refused it; an attendee container with a larger CPU quota already runs "
                "under this parent; stop the attendee servers, then run `workshop up` again")
    if e.errno == errno.EBUSY:
        return (f"{what}: attendees already use more memory than that; stop some attendee servers "
                "or lower capacity.reserve_memory")
    return f"{what}: {e.strerror}"


def can_lower_oom_score() -> bool:
    """Whether this process may set a negative oom_score_adj (it needs CAP_SYS_RESOURCE)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False
