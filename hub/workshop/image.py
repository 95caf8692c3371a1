"""Build the attendee image (images/attendee) with the Docker SDK.

    python -m workshop.image --name workshop-attendee:latest \
        --base python:3.11-slim-bookworm [--ca-bundle PATH] [--force]

Steps:
 1. hash the inputs (every file in images/attendee, the base ref and the id of
    the base image that would be used);
 2. skip when an image `name` carries that hash in its label;
 3. resolve the base: local image, else `docker pull` (bounded by a timeout),
    else a Debian bookworm minbase made with debootstrap and `docker import`
    (cached as workshop-base:bookworm);
 4. build with the classic builder and --network host, streaming the steps;
    the full output goes to a log file; a failure reports the step and the
    tail of its output;
 5. label the image with the hash and tag it `name`.

An optional CA bundle (TLS-intercepting proxy) is placed in a temporary
build context where only the builder stage reads it; the final stage never
copies it.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

HASH_LABEL = "org.workshop.inputs-hash"
BASE_LABEL = "org.workshop.base"            # base ref as requested (part of the hash)
BASE_IMAGE_LABEL = "org.workshop.base-image"  # base actually built on
FALLBACK_BASE = "workshop-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SUITE = "bookworm"
PULL_TIMEOUT = 60.0
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIR = REPO_ROOT / "images" / "attendee"


class ImageBuildError(RuntimeError):
    """The attendee image could not be built."""


class DockerUnavailable(ImageBuildError):
    """The Docker daemon cannot be reached."""


# ----------------------------------------------------------------- docker ---
def docker_client(timeout: int = 600):
    """A DockerClient for the environment's daemon, or a clear error."""
    try:
        import docker
    except ImportError as e:  # pragma: no cover
        raise DockerUnavailable("the `docker` Python package is missing: pip install docker==7.1.0") from e
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(version="auto", timeout=timeout)
        client.ping()
    except Exception as e:  # DockerException, ConnectionError, PermissionError...
        raise DockerUnavailable(
            f"cannot reach the Docker daemon at {host}: {e}. "
            "Is dockerd running (`docker info`), and may this user use its socket?"
        ) from None
    return client


def _image_or_none(client, ref: str):
    import docker

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None


# ------------------------------------------------------------------- hash ---
def _input_files(image_dir: Path = IMAGE_DIR) -> list[Path]:
    files = []
    for p in sorted(image_dir.rglob("*")):
        rel = p.relative_to(image_dir)
        if any(part in ("__pycache__", ".pytest_cache") for part in rel.parts) or p.suffix == ".pyc":
            continue
        if p.is_file():
            files.append(p)
    return files


def _hash(base: str, base_id: str, image_dir: Path = IMAGE_DIR) -> str:
    h = hashlib.sha256()
    h.update(b"workshop-attendee-inputs v1\0")
    for p in _input_files(image_dir):
        data = p.read_bytes()
        rel = p.relative_to(image_dir).as_posix().encode()
        h.update(b"F\0" + rel + b"\0" + str(len(data)).encode() + b"\0" + data)
        h.update(b"M\0" + (b"x" if os.access(p, os.X_OK) else b"-"))
    h.update(b"B\0" + base.encode() + b"\0" + base_id.encode())
    return h.hexdigest()


def _current_base_id(client, base: str) -> str:
    """Id of the base image a build would use now ('' if none is local)."""
    if client is None:
        return ""
    img = _image_or_none(client, base)
    if img is None and base != FALLBACK_BASE:
        img = _image_or_none(client, FALLBACK_BASE)
    return img.id if img is not None else ""


def inputs_hash(base: str, client=None) -> str:
    """sha256 over images/attendee/*, the base ref and the local base's id."""
    if client is None:
        try:
            client = docker_client(timeout=30)
        except DockerUnavailable:
            client = None
    return _hash(base, _current_base_id(client, base))


# ------------------------------------------------------------------- base ---
def _try_pull(client, ref: str, timeout: float, progress) -> bool:
    """docker pull in a thread; give up after `timeout` seconds."""
    repo, _, tag = ref.rpartition(":") if ":" in ref.split("/")[-1] else (ref, "", "latest")
    result: dict = {}

    def run():
        try:
            for _ in client.api.pull(repo, tag=tag, stream=True, decode=True):
                pass
            client.images.get(ref)
            result["ok"] = True
        except Exception as e:  # noqa: BLE001
            result["error"] = str(e).strip().splitlines()[0][:300]

    t = threading.Thread(target=run, name="docker-pull", daemon=True)
    t0 = time.monotonic()
    t.start()
    t.join(timeout)
    if t.is_alive():
        progress(f"base: pull of {ref} still running after {timeout:.0f}s; giving up on the registry")
        return False
    if result.get("ok"):
        progress(f"base: pulled {ref} in {time.monotonic() - t0:.1f}s")
        return True
    progress(f"base: cannot pull {ref} ({time.monotonic() - t0:.1f}s): {result.get('error')}")
    return False


def build_debootstrap_base(client, ref: str = FALLBACK_BASE, progress: Callable[[str], None] = print,
                           mirror: str = DEBIAN_MIRROR) -> str:
    """Debian bookworm minbase with python3 + venv, imported as `ref`."""
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            "no registry reachable and debootstrap is not installed: apt-get install -y debootstrap")
    if os.geteuid() != 0:
        raise ImageBuildError("building the debootstrap base needs root")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="workshop-base-") as tmp:
        root = Path(tmp) / "rootfs"
        log = Path(tmp) / "debootstrap.log"
        progress(f"base: debootstrap {DEBIAN_SUITE} minbase from {mirror} (about a minute)")
        cmd = ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
               DEBIAN_SUITE, str(root), mirror]
        with open(log, "wb") as f:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            tail = log.read_text(errors="replace").splitlines()[-20:]
            raise ImageBuildError("debootstrap failed (exit %d):\n  %s" % (rc, "\n  ".join(tail)))
        # trim: downloaded .debs, apt lists, logs
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log"):
            d = root / sub
            for p in d.glob("*"):
                if p.is_file() or p.is_symlink():
                    p.unlink()
        tarball = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(tarball), "."],
                       check=True)
        repo, _, tag = ref.partition(":")
        progress(f"base: importing rootfs as {ref}")
        client.api.import_image_from_file(str(tarball), repository=repo, tag=tag or "latest",
                                          changes=["ENV LANG=C.UTF-8"])
    img = client.images.get(ref)
    progress(f"base: {ref} ready in {time.monotonic() - t0:.0f}s ({img.short_id})")
    return ref


def resolve_base(client, base: str, progress: Callable[[str], None] = print,
                 pull_timeout: float = PULL_TIMEOUT) -> str:
    """Local base, else pulled base, else the (cached) debootstrap base."""
    if _image_or_none(client, base) is not None:
        progress(f"base: {base} (local)")
        return base
    if _try_pull(client, base, pull_timeout, progress):
        return base
    if _image_or_none(client, FALLBACK_BASE) is not None:
        progress(f"base: using the local {FALLBACK_BASE} instead of {base}")
        return FALLBACK_BASE
    return build_debootstrap_base(client, FALLBACK_BASE, progress)


# ------------------------------------------------------------------ build ---
def _make_context(tmp: Path, ca_bundle: Optional[Path]) -> Path:
    ctx = tmp / "context"
    shutil.copytree(IMAGE_DIR, ctx, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "ca"))
    ca_dir = ctx / "ca"
    ca_dir.mkdir()
    if ca_bundle is not None:
        ca_bundle = Path(ca_bundle)
        if not ca_bundle.is_file():
            raise ImageBuildError(f"CA bundle {ca_bundle} is not a file")
        shutil.copyfile(ca_bundle, ca_dir / "ca.crt")
    else:
        (ca_dir / "README").write_text("no proxy CA bundle given\n")
    return ctx


def _default_log_path() -> Path:
    d = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "workshop"
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        d = Path(tempfile.gettempdir())
    return d / time.strftime("image-build-%Y%m%d-%H%M%S.log")


def build_image(name: str, base: str, ca_bundle: Optional[Path] = None, force: bool = False,
                progress: Callable[[str], None] = print, client=None,
                log_path: Optional[Path] = None, pull_timeout: float = PULL_TIMEOUT) -> str:
    """Build images/attendee as `name` on `base`; returns the image id.

    Skips (returns the existing id) when `name` already carries the inputs
    hash, unless force. Raises ImageBuildError / DockerUnavailable.
    """
    if client is None:
        client = docker_client()
    t0 = time.monotonic()

    want = _hash(base, _current_base_id(client, base))
    existing = _image_or_none(client, name)
    if existing is not None and not force and (existing.labels or {}).get(HASH_LABEL) == want:
        progress(f"{name} is up to date ({existing.short_id}, inputs {want[:12]})")
        return existing.id

    base_ref = resolve_base(client, base, progress, pull_timeout)
    want = _hash(base, _current_base_id(client, base))  # base may be new now

    log_path = Path(log_path) if log_path else _default_log_path()
    progress(f"building {name} on {base_ref} (full log: {log_path})")
    with tempfile.TemporaryDirectory(prefix="workshop-image-") as tmp:
        ctx = _make_context(Path(tmp), ca_bundle)
        image_id = _run_build(client, ctx, name, base_ref, want, base, log_path, progress)
    img = client.images.get(image_id)
    if img.labels.get(HASH_LABEL) != want:  # pragma: no cover - docker always applies labels
        raise ImageBuildError(f"built image {image_id} lacks the {HASH_LABEL} label")
    size = img.attrs.get("Size", 0) / 1e6
    progress(f"built {name} ({img.short_id}, {size:.0f} MB) in {time.monotonic() - t0:.0f}s")
    return img.id


def _run_build(client, ctx: Path, name: str, base_ref: str, want: str, base: str,
               log_path: Path, progress) -> str:
    step = "(before the first step)"
    tail: collections.deque = collections.deque(maxlen=40)
    image_id = None
    error = None
    with open(log_path, "w", encoding="utf-8") as log:
        try:
            stream = client.api.build(
                path=str(ctx), tag=name, buildargs={"BASE": base_ref},
                labels={HASH_LABEL: want, BASE_LABEL: base, BASE_IMAGE_LABEL: base_ref},
                network_mode="host", rm=True, forcerm=True, pull=False, decode=True)
            partial = ""
            for chunk in stream:
                if "stream" in chunk:
                    text = partial + _ANSI.sub("", chunk["stream"])
                    lines = text.split("\n")
                    partial = lines.pop()  # incomplete last line
                    for line in lines:
                        log.write(line + "\n")
                        if line.startswith("Step "):
                            step = line.strip()
                            tail.clear()
                            progress(step if len(step) <= 160 else step[:157] + "...")
                            log.flush()
                        else:
                            tail.append(line)
                            if line.startswith("[warm"):
                                # The Theano warm-up is the longest step; show its progress.
                                progress("    " + line.strip())
                        if line.startswith("Successfully built "):
                            image_id = line.split()[-1]
                elif "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
                elif "error" in chunk:
                    error = chunk["error"].strip()
                    log.write("ERROR: " + error + "\n")
                elif "status" in chunk:
                    log.write(chunk["status"] + "\n")
            if partial:
                log.write(partial + "\n")
                tail.append(partial)
        except Exception as e:  # APIError, connection reset...
            if error is None:
                error = f"{type(e).__name__}: {e}"
            log.write("ERROR: " + error + "\n")
    if error is not None or image_id is None:
        out = "\n".join("    " + line for line in tail if line.strip())
        raise ImageBuildError(
            f"building {name} failed at {step}\n  {error or 'no image id reported'}\n"
            f"  last output:\n{out}\n  full log: {log_path}")
    return image_id


# -------------------------------------------------------------------- cli ---
def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workshop.image", description="Build the attendee image.")
    ap.add_argument("--name", default="workshop-attendee:latest", help="image tag to build")
    ap.add_argument("--base", default="python:3.11-slim-bookworm",
                    help="base image (falls back to a debootstrap bookworm base when it cannot be pulled)")
    ap.add_argument("--ca-bundle", type=Path, default=None,
                    help="PEM CA bundle of a TLS-intercepting proxy; used by pip during the build only")
    ap.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    ap.add_argument("--log", type=Path, default=None, help="where to write the full build output")
    ap.add_argument("--pull-timeout", type=float, default=PULL_TIMEOUT, help="seconds to wait for docker pull")
    ap.add_argument("--print-hash", action="store_true", help="print the inputs hash and exit")
    args = ap.parse_args(argv)

    def progress(msg: str) -> None:
        print(msg, flush=True)

    try:
        if args.print_hash:
            print(inputs_hash(args.base))
            return 0
        t0 = time.monotonic()
        image_id = build_image(args.name, args.base, ca_bundle=args.ca_bundle, force=args.force,
                               progress=progress, log_path=args.log, pull_timeout=args.pull_timeout)
    except ImageBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.name} {image_id} ({time.monotonic() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
