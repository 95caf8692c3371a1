"""Checks of the built attendee image, in real containers.

Image: $WORKSHOP_IMAGE (default workshop-attendee:latest); build it with
`images/build` (or `workshop build-image`). Containers run the way the hub
runs them: arbitrary uid, no capabilities, no-new-privileges, CPU and memory
limits, HOME/NB_USER from the environment -- plus no network.
"""
from __future__ import annotations

import json
import os
import re
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hub"))

docker = pytest.importorskip("docker", reason="docker SDK (pip install docker==7.1.0) not installed")

IMAGE = os.environ.get("WORKSHOP_IMAGE", "workshop-attendee:latest")
CA_BUNDLE = Path(os.environ.get("WORKSHOP_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
UID = 20001


@pytest.fixture(scope="session")
def client():
    try:
        c = docker.from_env(version="auto", timeout=120)
        c.ping()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"docker daemon unreachable: {e}")
    return c


@pytest.fixture(scope="session")
def image(client):
    try:
        return client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {IMAGE} is not built; build it with `images/build --name {IMAGE}` "
                    "(add --ca-bundle PATH behind a TLS proxy) or `workshop build-image`", pytrace=False)


def run(client, image, cmd, *, cpus: float = 1.0, user: str = f"{UID}:{UID}", env=None,
        entrypoint=None) -> str:
    """Run cmd like the hub would; return stdout+stderr, fail on non-zero exit."""
    environment = {"NB_USER": "alice", "HOME": "/tmp/alicehome"}
    environment.update(env or {})
    kwargs = dict(
        user=user, cap_drop=["ALL"], security_opt=["no-new-privileges"],
        nano_cpus=int(cpus * 1e9), mem_limit="2g", environment=environment,
        network_mode="none", detach=True,
    )
    if entrypoint is not None:
        kwargs["entrypoint"] = entrypoint
    c = client.containers.run(image.id, cmd, **kwargs)
    try:
        rc = c.wait(timeout=300)["StatusCode"]
        out = c.logs(stdout=True, stderr=True).decode(errors="replace")
    finally:
        c.remove(force=True)
    assert rc == 0, f"{cmd!r} exited {rc}:\n{out}"
    return out


def py(client, image, code: str, **kw) -> str:
    return run(client, image, ["python", "-c", textwrap.dedent(code)], **kw)


# ------------------------------------------------------------------ users ---
def test_default_user_and_entrypoint(image):
    cfg = image.attrs["Config"]
    assert cfg["User"] and cfg["User"].split(":")[0] not in ("", "0", "root")
    assert cfg["Entrypoint"][0].endswith("tini")
    assert cfg["Cmd"] == ["jupyterhub-singleuser"]


def test_arbitrary_uid_has_identity(client, image):
    out = run(client, image, ["sh", "-c",
                              'id -u; whoami; echo "$HOME"; test -w "$HOME" && echo home-writable; '
                              'python -c "import os, pwd; e = pwd.getpwuid(os.getuid()); print(e.pw_name, e.pw_dir)"; '
                              'getent passwd alice; cat /proc/1/comm'])
    lines = out.split()
    assert lines[0] == str(UID), out                       # not root
    assert lines[1] == "alice", out                        # whoami works
    assert "/tmp/alicehome" in lines and "home-writable" in lines, out
    assert "alice /tmp/alicehome" in out, out              # getpwuid works
    assert f"alice:x:{UID}:{UID}:" in out, out
    assert lines[-1] == "tini", out                        # tini is PID 1


def test_default_user_jovyan(client, image):
    out = run(client, image, ["sh", "-c", "id -u; whoami; echo $HOME"], user="",
              env={"NB_USER": "jovyan", "HOME": "/home/jovyan"})
    assert out.split() == ["1000", "jovyan", "/home/jovyan"], out


@pytest.mark.parametrize("cpus,expected", [(0.5, 1), (1, 1), (2, 2)])
def test_thread_env_follows_cpu_limit(client, image, cpus, expected):
    if expected > (os.cpu_count() or 1):
        pytest.skip(f"host has fewer than {expected} CPUs")
    out = run(client, image, ["sh", "-c", "echo $OPENBLAS_NUM_THREADS $OMP_NUM_THREADS $MKL_NUM_THREADS"],
              cpus=cpus)
    assert out.split() == [str(expected)] * 3, out


def test_thread_env_not_overridden(client, image):
    out = run(client, image, ["sh", "-c", "echo $OMP_NUM_THREADS"], env={"OMP_NUM_THREADS": "3"})
    assert out.strip() == "3"


# ----------------------------------------------------------------- stack ---
def test_versions(client, image):
    out = py(client, image, """
        import json, importlib.metadata as md
        names = ["jupyterlab", "jupyterhub", "nbgrader", "numpy", "scipy", "Theano", "Lasagne",
                 "matplotlib", "scikit-learn", "jupyter-resource-usage"]
        v = {}
        for n in names:
            try: v[n] = md.version(n)
            except md.PackageNotFoundError: v[n] = None
        import lasagne; v["lasagne.__version__"] = lasagne.__version__
        print(json.dumps(v))
    """)
    v = json.loads(out.strip().splitlines()[-1])
    assert v["jupyterlab"].startswith("4."), v
    assert v["jupyterhub"].startswith("5."), v
    assert v["nbgrader"].startswith("0.9."), v
    assert v["numpy"].startswith("1.23."), v
    assert tuple(int(x) for x in v["scipy"].split(".")[:2]) < (1, 12), v
    assert v["Theano"] == "1.0.5", v
    assert v["lasagne.__version__"] == "0.2.dev1", v
    assert v["matplotlib"] and v["scikit-learn"] and v["jupyter-resource-usage"], v
    run(client, image, ["jupyterhub-singleuser", "--version"])


def test_theano_lasagne_layers(client, image):
    out = py(client, image, """
        import os, time, numpy as np, theano, theano.tensor as T, lasagne
        from lasagne import layers as L
        t0 = time.time()
        assert theano.config.blas.ldflags == "-lopenblas", theano.config.blas.ldflags
        assert theano.config.compiledir.startswith(os.environ["HOME"] + "/.theano/"), theano.config.compiledir
        f = theano.config.floatX
        x = T.tensor4("x")
        net = L.InputLayer((None, 1, 12, 12), x)
        net = L.Conv2DLayer(net, 4, (3, 3), flip_filters=False)
        net = L.MaxPool2DLayer(net, 2)
        net = L.batch_norm(L.DenseLayer(net, 5))
        out = theano.function([x], L.get_output(net, deterministic=True))(np.ones((2, 1, 12, 12), f))
        assert out.shape == (2, 5) and np.isfinite(out).all()
        s = T.tensor3("s")
        rnn = L.LSTMLayer(L.InputLayer((None, None, 3), s), 6, only_return_final=True)
        out = theano.function([s], L.get_output(rnn))(np.ones((2, 4, 3), f))
        assert out.shape == (2, 6)
        print("ok", round(time.time() - t0, 1))
    """)
    assert "ok" in out, out


def test_warm_cache_is_hit(client, image):
    """Compiling a conv net's training function needs no new C modules."""
    out = py(client, image, """
        import glob, os, time, numpy as np, theano, theano.tensor as T, lasagne
        from lasagne import layers as L
        cd = theano.config.compiledir
        count = lambda: len(glob.glob(os.path.join(cd, "tmp*", "key.pkl")))
        before, t0 = count(), time.time()
        x, y = T.tensor4("x"), T.ivector("y")
        net = L.InputLayer((None, 1, 28, 28), x)
        net = L.Conv2DLayer(net, 16, (3, 3), flip_filters=False)
        net = L.MaxPool2DLayer(net, (2, 2))
        net = L.DenseLayer(L.DropoutLayer(net, 0.5), 24)
        net = L.DenseLayer(net, 10, nonlinearity=lasagne.nonlinearities.softmax)
        loss = lasagne.objectives.categorical_crossentropy(L.get_output(net), y).mean()
        upd = lasagne.updates.adam(loss, L.get_all_params(net, trainable=True))
        train = theano.function([x, y], loss, updates=upd)
        train(np.random.rand(8, 1, 28, 28).astype(theano.config.floatX), np.arange(8, dtype="int32"))
        print("seeded", before, "new", count() - before, "secs", round(time.time() - t0, 1))
    """)
    m = re.search(r"seeded (\d+) new (\d+) secs ([\d.]+)", out)
    assert m, out
    seeded, new = int(m.group(1)), int(m.group(2))
    assert seeded > 20, f"compile cache was not seeded: {out}"
    assert new == 0, f"warm cache missed {new} module(s): {out}"


def test_theano_cache_falls_back_to_tmp_when_home_is_readonly(client, image):
    out = py(client, image, "import theano; print(theano.config.compiledir)",
             env={"HOME": "/home/jovyan"})  # owned by uid 1000, not writable for 20001
    assert out.strip().splitlines()[-1].startswith(f"/tmp/theano-{UID}/compiledir_"), out


def test_fashion_mnist(client, image):
    out = py(client, image, """
        import gzip, os, struct
        d = os.environ["FASHION_MNIST_DIR"]
        want = {"train-images-idx3-ubyte.gz": (2051, 60000), "train-labels-idx1-ubyte.gz": (2049, 60000),
                "t10k-images-idx3-ubyte.gz": (2051, 10000), "t10k-labels-idx1-ubyte.gz": (2049, 10000)}
        for name, (magic, n) in want.items():
            with gzip.open(os.path.join(d, name)) as f:
                got = struct.unpack(">II", f.read(8))
            assert got == (magic, n), (name, got)
        print("ok", sorted(os.listdir(d)))
    """)
    assert "ok" in out


# --------------------------------------------------------------- nbgrader ---
def test_nbgrader_student_extensions_only(client, image):
    out = run(client, image, ["sh", "-c", "jupyter server extension list 2>&1; echo ====; jupyter labextension list 2>&1"],
              env={"NO_COLOR": "1"})
    server, lab = out.split("====")
    server = re.sub(r"\x1b\[[0-9;]*m", "", server)
    lab = re.sub(r"\x1b\[[0-9;]*m", "", lab)
    state = dict(re.findall(r"^\s*(nbgrader\.server_extensions\.\w+) (enabled|disabled)", server, re.M))
    assert state.get("nbgrader.server_extensions.assignment_list") == "enabled", server
    assert state.get("nbgrader.server_extensions.validate_assignment") == "enabled", server
    assert state.get("nbgrader.server_extensions.formgrader") == "disabled", server
    assert state.get("nbgrader.server_extensions.course_list") == "disabled", server
    assert re.search(r"@jupyter/nbgrader v0\.9\.\S+ enabled", lab), lab
    disabled = lab.split("Disabled extensions:")[-1] if "Disabled extensions:" in lab else ""
    for plugin in ("formgrader", "create-assignment", "course-list"):
        assert f"@jupyter/nbgrader:{plugin}" in disabled, lab
    for plugin in ("assignment-list", "validate-assignment"):
        assert f"@jupyter/nbgrader:{plugin}" not in disabled, lab


# ------------------------------------------------------------- proxy CA ---
def _pem_blocks(text: str) -> list[str]:
    return re.findall(r"-----BEGIN CERTIFICATE-----\n(.*?)-----END CERTIFICATE-----", text, re.S)


def test_proxy_ca_not_in_image(client, image):
    if not CA_BUNDLE.is_file():
        pytest.skip(f"no CA bundle at {CA_BUNDLE} to look for")
    host_blocks = _pem_blocks(CA_BUNDLE.read_text(errors="replace"))
    image_bundle = run(client, image, ["cat", "/etc/ssl/certs/ca-certificates.crt"])
    extra = [b for b in host_blocks if b not in set(_pem_blocks(image_bundle))]
    # distinctive base64 lines of the certs only the build host trusts (the proxy's)
    needles = []
    for b in extra:
        lines = [ln for ln in b.split("\n") if len(ln) == 64]
        needles += lines[2:4]
    assert not any(n in image_bundle for n in needles)
    # No file anywhere in the image holds them (nor the bundle itself).
    script = "test ! -e /tmp/build-ca && test ! -e /tmp/req || exit 3; "
    if needles:
        args = " ".join(f"-e '{n}'" for n in needles)
        script += (f"grep -rlF {args} / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev "
                   "2>/dev/null; echo scan-done")
    else:
        script += "echo scan-done"
    out = run(client, image, ["sh", "-c", script], user="0:0")
    found = [ln for ln in out.splitlines() if ln.startswith("/")]
    assert "scan-done" in out and not found, f"proxy CA found in image files: {found}"
    # ... nor the history (build commands), labels or env.
    meta = json.dumps([h.get("CreatedBy", "") for h in image.history()]) + json.dumps(image.attrs["Config"])
    assert "BEGIN CERTIFICATE" not in meta
    assert not any(n in meta for n in needles)
    assert not any(n.replace("/", "\\/") in meta for n in needles)


# ------------------------------------------------------------ build tool ---
def test_label_and_rebuild_is_skipped(client, image):
    from workshop import image as imagemod

    labels = image.labels or {}
    assert re.fullmatch(r"[0-9a-f]{64}", labels.get(imagemod.HASH_LABEL, "")), labels
    base = labels.get(imagemod.BASE_LABEL)
    assert base, labels
    assert labels[imagemod.HASH_LABEL] == imagemod.inputs_hash(base, client=client), \
        "image is older than images/attendee; rebuild it"
    messages: list[str] = []
    t0 = time.monotonic()
    got = imagemod.build_image(IMAGE, base, progress=messages.append, client=client)
    assert got == image.id
    assert any("up to date" in m for m in messages), messages
    assert time.monotonic() - t0 < 10
