"""An attendee signs up, gets their own limited container, and works in it.

Everything here runs for real: `workshop up` (JupyterHub + configurable-http-proxy),
the Docker engine, the attendee image, and kernels driven over the Jupyter
websocket protocol through the hub's proxy.
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from kernelclient import Kernel, KernelDied


@pytest.fixture(scope="module")
def alice(hub):
    """An attendee with a running server, and a token for it."""
    name, _, _ = hub.new_attendee("alice")
    hub.start_server(name)
    return name, hub.user_token(name)


@pytest.fixture(scope="module")
def bob(hub):
    name, _, _ = hub.new_attendee("bob")
    hub.start_server(name)
    return name, hub.user_token(name)


def container_of(docker_client, name):
    found = docker_client.containers.list(filters={"label": f"org.workshop.user={name}"})
    assert len(found) == 1, f"expected one running container for {name}, found {found}"
    return found[0]


def test_signed_up_attendee_gets_a_running_server_through_the_form(hub):
    name, _, session = hub.new_attendee("web")
    # The spawn a browser triggers right after login.
    r = session.get(f"{hub.url}/hub/spawn/{name}", allow_redirects=True, timeout=60)
    assert r.status_code == 200
    server = hub.wait_ready(name)
    assert server["url"] == f"/user/{name}/"
    # The same browser session opens JupyterLab (the hub's OAuth hand-off
    # included) and then reaches the server's API through the proxy.
    r = session.get(f"{hub.url}/user/{name}/lab", timeout=60)
    assert r.status_code == 200 and r.url.startswith(f"{hub.url}/user/{name}/lab")
    assert "JupyterLab" in r.text
    r = session.get(f"{hub.url}/user/{name}/api/status", timeout=30)
    assert r.status_code == 200 and "started" in r.json()


def test_limits_are_applied_by_docker_and_seen_inside_the_container(hub, docker_client, alice):
    name, token = alice
    limits = hub.settings["limits"]
    mem = 768 * 1024**2
    c = container_of(docker_client, name)
    hc = c.attrs["HostConfig"]
    assert hc["Memory"] == mem
    assert hc["MemorySwap"] == mem, "memory+swap must equal memory: no swap"
    assert hc["NanoCpus"] == 0 and hc["CpuQuota"] == int(limits["cpu"] * hc["CpuPeriod"])
    assert hc["PidsLimit"] == limits["pids"]
    assert hc["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in hc["SecurityOpt"]
    assert hc["Privileged"] is False
    uid = int(c.attrs["Config"]["User"].split(":")[0])
    assert uid >= hub.settings["hub"]["uid_base"]
    assert all(b["HostIp"] == "127.0.0.1" for b in c.attrs["NetworkSettings"]["Ports"]["8888/tcp"])
    assert not any("docker.sock" in (m.get("Source") or "") for m in c.attrs["Mounts"])

    k = Kernel(hub.server_url(name), token)
    try:
        seen = json.loads(k.run(r"""
import json, os, pwd, pathlib
def first(*paths):
    for p in paths:
        if os.path.exists(p):
            return pathlib.Path(p).read_text().strip()
status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
print(json.dumps({
    "uid": os.getuid(), "user": pwd.getpwuid(os.getuid()).pw_name, "home": os.path.expanduser("~"),
    "mem": first("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"),
    "memsw": first("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes", "/sys/fs/cgroup/memory.swap.max"),
    "quota": first("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu.max"),
    "pids": first("/sys/fs/cgroup/pids/pids.max", "/sys/fs/cgroup/pids.max"),
    "nnp": status["NoNewPrivs"].strip(), "capeff": status["CapEff"].strip(),
    "threads": os.environ.get("OPENBLAS_NUM_THREADS"),
}))
"""))
    finally:
        k.close()
    assert seen["uid"] == uid and seen["uid"] != 0
    assert seen["user"] == name and seen["home"] == f"/home/{name}"
    assert int(seen["mem"]) == mem
    assert seen["memsw"] in (str(mem), "0", None)  # v1: mem+swap == mem; v2: swap.max 0
    assert seen["quota"].split()[0] == str(int(limits["cpu"] * 100000))
    assert seen["pids"] == str(limits["pids"])
    assert seen["nnp"] == "1"
    assert int(seen["capeff"], 16) == 0
    assert seen["threads"] == "1"


TRAIN_CNN = r"""
import gzip, time, numpy as np, theano, theano.tensor as T, lasagne
from lasagne.layers import InputLayer, Conv2DLayer, MaxPool2DLayer, DenseLayer, batch_norm, get_output, get_all_params
def idx(path):
    with gzip.open(path) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)
root = "/usr/share/datasets/fashion-mnist/"
X = idx(root + "train-images-idx3-ubyte.gz")[:400].reshape(-1, 1, 28, 28).astype("float32") / 255
y = idx(root + "train-labels-idx1-ubyte.gz")[:400].astype("int32")
xs, ys = T.tensor4("x"), T.ivector("y")
net = InputLayer((None, 1, 28, 28), xs)
net = batch_norm(Conv2DLayer(net, 8, 3, flip_filters=False))
net = MaxPool2DLayer(net, 2)
net = DenseLayer(net, 10, nonlinearity=lasagne.nonlinearities.softmax)
loss = lasagne.objectives.categorical_crossentropy(get_output(net), ys).mean()
params = get_all_params(net, trainable=True)
train = theano.function([xs, ys], loss, updates=lasagne.updates.adam(loss, params, 0.01))
losses = [float(np.mean([train(X[i:i + 50], y[i:i + 50]) for i in range(0, 400, 50)])) for epoch in range(4)]
print(losses)
"""


def test_a_kernel_trains_a_lasagne_cnn_on_fashion_mnist_and_the_loss_goes_down(hub, alice):
    name, token = alice
    k = Kernel(hub.server_url(name), token)
    try:
        losses = json.loads(k.run(TRAIN_CNN, timeout=300).strip().splitlines()[-1])
    finally:
        k.close()
    assert len(losses) == 4
    assert losses[-1] < losses[0] * 0.8, f"loss did not go down: {losses}"


def test_memory_hog_is_killed_inside_its_own_container_only(hub, docker_client, alice, bob):
    a_name, a_token = alice
    b_name, b_token = bob
    kb = Kernel(hub.server_url(b_name), b_token)
    b_pid = kb.run("import os; print(os.getpid())").strip()
    ka = Kernel(hub.server_url(a_name), a_token)
    with pytest.raises(KernelDied):
        # Grab memory until the kernel is OOM-killed: 16 MiB at a time, touched.
        ka.execute("chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 2**20))\n", timeout=180)
    ka.ws.close()
    # A is still served and can start working again.
    k2 = Kernel(hub.server_url(a_name), a_token)
    try:
        assert k2.run("print(6 * 7)").strip() == "42"
    finally:
        k2.close()
    # B's kernel never noticed: same process, still answering.
    try:
        assert kb.run("import os; print(os.getpid())").strip() == b_pid
    finally:
        kb.close()
    assert container_of(docker_client, a_name).attrs["State"]["Running"]
    assert hub.alive()


def test_from_inside_one_container_the_other_attendee_and_docker_are_unreachable(hub, docker_client, alice, bob):
    a_name, a_token = alice
    b_name, _ = bob
    b = container_of(docker_client, b_name)
    b_ip = next(iter(b.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    gateway = next(iter(b.attrs["NetworkSettings"]["Networks"].values()))["Gateway"]
    b_host_port = int(b.attrs["NetworkSettings"]["Ports"]["8888/tcp"][0]["HostPort"])
    k = Kernel(hub.server_url(a_name), a_token)
    try:
        seen = json.loads(k.run(f"""
import json, os, socket
def reach(host, port):
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, port)); return "open"
    except OSError as e:
        return type(e).__name__
    finally:
        s.close()
print(json.dumps({{
    "b_container": reach({b_ip!r}, 8888),
    "b_published_on_gateway": reach({gateway!r}, {b_host_port}),
    "b_published_on_loopback": reach("127.0.0.1", {b_host_port}),
    "docker_tcp": reach({gateway!r}, 2375),
    "docker_socket": any(os.path.exists(p) for p in ("/var/run/docker.sock", "/run/docker.sock")),
    "homes": sorted(os.listdir("/home")),
    "b_home": os.path.exists("/home/{b_name}"),
}}))
"""))
    finally:
        k.close()
    assert seen["b_container"] != "open"
    assert seen["b_published_on_gateway"] != "open"
    assert seen["b_published_on_loopback"] != "open"
    assert seen["docker_tcp"] != "open"
    assert seen["docker_socket"] is False
    assert seen["b_home"] is False and b_name not in seen["homes"]
    # Sanity check that the probe can succeed at all: A reaches its own hub API.
    assert hub.alive()


def test_home_survives_server_restart_and_running_server_survives_hub_restart(hub, docker_client):
    name, _, _ = hub.new_attendee("carol")
    hub.start_server(name)
    token = hub.user_token(name)
    k = Kernel(hub.server_url(name), token)
    k.run("open('notes.txt', 'w').write('gradient descent')")
    k.close()

    hub.stop_server(name)
    assert not docker_client.containers.list(filters={"label": f"org.workshop.user={name}"})
    hub.start_server(name)
    k = Kernel(hub.server_url(name), token)
    assert k.run("print(open('notes.txt').read())").strip() == "gradient descent"
    kernel_id = k.id
    k.ws.close()

    before = container_of(docker_client, name).id
    hub.restart()
    assert container_of(docker_client, name).id == before, "hub restart must not respawn the server"
    server = hub.api("GET", f"/users/{name}").json()["servers"][""]
    assert server["ready"]
    # Same kernel, same container, reached through the restarted hub's proxy.
    deadline = time.monotonic() + 30
    while True:
        try:
            k = Kernel(hub.server_url(name), token, kernel_id=kernel_id)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    try:
        assert k.run("print(open('notes.txt').read())").strip() == "gradient descent"
    finally:
        k.close()


def test_stopped_attendee_home_volume_survives_container_removal(hub, docker_client):
    name, _, _ = hub.new_attendee("dave")
    hub.start_server(name)
    hub.stop_server(name)
    volumes = docker_client.volumes.list(filters={"label": f"org.workshop.user={name}"})
    assert len(volumes) == 1
    r = requests.get(f"{hub.api_url}/users/{name}", headers={"Authorization": f"token {hub.api_token}"}, timeout=10)
    assert r.json()["servers"] == {}


def test_idle_culler_runs_as_a_hub_service_with_only_its_scopes(hub):
    import requests

    service = hub.api("GET", "/services/idle-culler").json()
    assert service["pid"], "the hub should have started the culler process"
    # Ask the hub what the culler's own token may do (tests run as root, so
    # the culler's environment is readable here).
    env = dict(kv.split("=", 1) for kv in
               open(f"/proc/{service['pid']}/environ").read().split("\0") if "=" in kv)
    me = requests.get(f"{hub.api_url}/user", timeout=10,
                      headers={"Authorization": f"token {env['JUPYTERHUB_API_TOKEN']}"}).json()
    assert me["kind"] == "service" and me["name"] == "idle-culler"
    # The four granted scopes, plus read:users:name, which list:users implies.
    assert sorted(me["scopes"]) == ["delete:servers", "list:users", "read:servers",
                                    "read:users:activity", "read:users:name"], me["scopes"]
