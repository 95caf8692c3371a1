"""Time to the first training step of a small Lasagne CNN in a fresh attendee
container, with the image's pre-warmed Theano cache and without it.

    python benchmarks/bench_first_training_cell.py [--image IMG] [--cpus 1 2] [--repeat 2]

Each run is a new container (arbitrary uid, no caps, --cpus N, 2 GiB, no
network). Inside, the "cell" loads 512 Fashion-MNIST images, builds a CNN
(deliberately not the same net as warm_theano_cache.py), compiles the adam
training function and runs one minibatch. Reported times are from the start
of the python process (read from /proc) and, on the host, from `docker run`
to exit. "cold" points base_compiledir at an empty directory.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import textwrap
import time

import docker

CELL = textwrap.dedent(r"""
    import os, time
    def since_start():
        # seconds since this process started (field 22 of /proc/self/stat, in ticks)
        ticks = os.sysconf("SC_CLK_TCK")
        start = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]) / ticks
        return float(open("/proc/uptime").read().split()[0]) - start
    marks = {}
    import gzip, json, numpy as np
    import theano, theano.tensor as T, lasagne
    from lasagne import layers as L
    marks["imports"] = since_start()

    d = os.environ["FASHION_MNIST_DIR"]
    with gzip.open(d + "/train-images-idx3-ubyte.gz") as f:
        X = np.frombuffer(f.read(16 + 512 * 784), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(d + "/train-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(8 + 512), np.uint8, offset=8).astype("int32")
    X = (X / np.float32(255)).astype(theano.config.floatX)

    x_var, y_var = T.tensor4("inputs"), T.ivector("targets")
    net = L.InputLayer((None, 1, 28, 28), x_var)
    net = L.Conv2DLayer(net, 16, (3, 3), nonlinearity=lasagne.nonlinearities.rectify)
    net = L.MaxPool2DLayer(net, (2, 2))
    net = L.batch_norm(L.Conv2DLayer(net, 32, (3, 3)))
    net = L.MaxPool2DLayer(net, (2, 2))
    net = L.DenseLayer(L.DropoutLayer(net, p=0.5), 64)
    net = L.DenseLayer(L.DropoutLayer(net, p=0.5), 10, nonlinearity=lasagne.nonlinearities.softmax)
    loss = lasagne.objectives.categorical_crossentropy(L.get_output(net), y_var).mean()
    params = L.get_all_params(net, trainable=True)
    train = theano.function([x_var, y_var], loss, updates=lasagne.updates.adam(loss, params))
    marks["compiled"] = since_start()
    t = time.time()
    train(X[:128], y[:128])
    marks["first_step_s"] = time.time() - t
    marks["first_training_step_done"] = since_start()
    t = time.time()
    for i in range(0, 512, 128):
        train(X[i:i + 128], y[i:i + 128])
    marks["epoch_512_s"] = time.time() - t
    import glob
    marks["modules_in_cache"] = len(glob.glob(theano.config.compiledir + "/tmp*/key.pkl"))
    print("BENCH " + json.dumps(marks))
""")


def run_once(client, image: str, cpus: float, warm: bool) -> dict:
    env = {"NB_USER": "bench", "HOME": "/tmp/benchhome"}
    if not warm:
        env["THEANO_FLAGS"] = "base_compiledir=/tmp/cold-theano"
    t0 = time.monotonic()
    c = client.containers.run(
        image, ["python", "-c", CELL], user="20001:20001", cap_drop=["ALL"],
        security_opt=["no-new-privileges"], nano_cpus=int(cpus * 1e9), mem_limit="2g",
        environment=env, network_mode="none", detach=True)
    try:
        rc = c.wait(timeout=900)["StatusCode"]
        wall = time.monotonic() - t0
        out = c.logs().decode(errors="replace")
    finally:
        c.remove(force=True)
    if rc != 0:
        raise RuntimeError(f"benchmark cell failed (exit {rc}):\n{out[-3000:]}")
    line = [ln for ln in out.splitlines() if ln.startswith("BENCH ")][-1]
    r = json.loads(line[6:])
    r["docker_run_wall"] = wall
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default=os.environ.get("WORKSHOP_IMAGE", "workshop-attendee:latest"))
    ap.add_argument("--cpus", type=float, nargs="+", default=[1.0])
    ap.add_argument("--repeat", type=int, default=2, help="runs per (cpus, warm/cold) pair")
    args = ap.parse_args(argv)
    client = docker.from_env(version="auto", timeout=900)
    client.images.get(args.image)  # fail early if missing

    print(f"image {args.image}; times in seconds; process = since python started; "
          f"wall = docker run to exit")
    print(f"{'cpus':>4} {'cache':>5} {'imports':>8} {'compiled':>9} {'1st step':>9} "
          f"{'process':>8} {'wall':>7} {'epoch512':>9} {'modules':>8}")
    summary = {}
    for cpus in args.cpus:
        for warm in (True, False):
            rows = [run_once(client, args.image, cpus, warm) for _ in range(args.repeat)]
            for r in rows:
                print(f"{cpus:>4g} {'warm' if warm else 'cold':>5} {r['imports']:>8.2f} {r['compiled']:>9.2f} "
                      f"{r['first_step_s']:>9.3f} {r['first_training_step_done']:>8.2f} "
                      f"{r['docker_run_wall']:>7.2f} {r['epoch_512_s']:>9.3f} {r['modules_in_cache']:>8}",
                      flush=True)
            summary[(cpus, warm)] = statistics.median(r["first_training_step_done"] for r in rows)
    print()
    for cpus in args.cpus:
        w, c = summary[(cpus, True)], summary[(cpus, False)]
        print(f"cpus={cpus:g}: first training step after {w:.1f}s warm vs {c:.1f}s cold "
              f"(median, x{c / w:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
