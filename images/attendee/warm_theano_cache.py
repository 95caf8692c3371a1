"""Pre-compile Theano's C modules for the layers the workshop uses.

Run at image build time with THEANO_FLAGS=base_compiledir=<seed dir>. Builds
small Lasagne nets (dense, conv, pool, batch norm, LSTM, GRU, vanilla RNN),
compiles their training (adam / nesterov momentum / sgd) and evaluation
functions and runs each once on random data. Shapes do not matter for the
cache (Theano's C code is shape-generic), only the op graph does.
"""
import os
import sys
import time
import uuid

import numpy as np
import theano
import theano.tensor as T
import lasagne
from lasagne import layers as L
from lasagne import nonlinearities as nl

floatX = theano.config.floatX
rng = np.random.RandomState(0)
T0 = time.time()


def log(msg):
    print("[warm %6.1fs] %s" % (time.time() - T0, msg), flush=True)


def compile_classifier(name, net, input_var, target_var, xs, ys, l2=False):
    """Train (three update rules) + deterministic eval functions."""
    prediction = L.get_output(net)
    loss = lasagne.objectives.categorical_crossentropy(prediction, target_var).mean()
    if l2:
        loss = loss + 1e-4 * lasagne.regularization.regularize_network_params(
            net, lasagne.regularization.l2)
    params = L.get_all_params(net, trainable=True)
    test_prediction = L.get_output(net, deterministic=True)
    test_loss = lasagne.objectives.categorical_crossentropy(test_prediction, target_var).mean()
    test_acc = T.mean(T.eq(T.argmax(test_prediction, axis=1), target_var), dtype=floatX)
    val_fn = theano.function([input_var, target_var], [test_loss, test_acc])
    predict_fn = theano.function([input_var], T.argmax(test_prediction, axis=1))
    val_fn(xs, ys)
    predict_fn(xs)
    rules = {
        "adam": lambda: lasagne.updates.adam(loss, params, learning_rate=1e-3),
        "nesterov": lambda: lasagne.updates.nesterov_momentum(loss, params, learning_rate=0.01, momentum=0.9),
        "sgd": lambda: lasagne.updates.sgd(loss, params, learning_rate=0.01),
    }
    for rule, make in rules.items():
        train_fn = theano.function([input_var, target_var], loss, updates=make())
        train_fn(xs, ys)
        log("%s: %s train + eval compiled" % (name, rule))


def data(shape, n_classes=10):
    xs = rng.rand(*shape).astype(floatX)
    ys = rng.randint(0, n_classes, size=shape[0]).astype("int32")
    return xs, ys


def mlp():
    x, y = T.matrix("inputs"), T.ivector("targets")
    net = L.InputLayer((None, 784), x)
    net = L.DropoutLayer(net, p=0.2)
    net = L.DenseLayer(net, 64, nonlinearity=nl.rectify)
    net = L.DropoutLayer(net, p=0.5)
    net = L.DenseLayer(net, 32, nonlinearity=nl.tanh)
    net = L.DenseLayer(net, 10, nonlinearity=nl.softmax)
    compile_classifier("mlp", net, x, y, *data((16, 784)), l2=True)


def cnn(flip_filters, bn):
    x, y = T.tensor4("inputs"), T.ivector("targets")
    wrap = L.batch_norm if bn else (lambda layer: layer)
    net = L.InputLayer((None, 1, 28, 28), x)
    net = wrap(L.Conv2DLayer(net, 8, (5, 5), nonlinearity=nl.rectify, flip_filters=flip_filters))
    net = L.MaxPool2DLayer(net, (2, 2))
    net = wrap(L.Conv2DLayer(net, 8, (3, 3), pad="same", nonlinearity=nl.rectify, flip_filters=flip_filters))
    net = L.MaxPool2DLayer(net, (2, 2))
    net = L.DropoutLayer(net, p=0.5)
    net = wrap(L.DenseLayer(net, 32, nonlinearity=nl.rectify))
    net = L.DenseLayer(net, 10, nonlinearity=nl.softmax)
    name = "cnn(flip=%s,bn=%s)" % (flip_filters, bn)
    compile_classifier(name, net, x, y, *data((8, 1, 28, 28)))


def rnn(kind, only_final):
    x, y = T.tensor3("inputs"), T.ivector("targets")
    net = L.InputLayer((None, None, 20), x)
    if kind == "lstm":
        net = L.LSTMLayer(net, 16, grad_clipping=100, only_return_final=only_final)
    elif kind == "gru":
        net = L.GRULayer(net, 16, grad_clipping=100, only_return_final=only_final)
    else:
        net = L.RecurrentLayer(net, 16, nonlinearity=nl.tanh, grad_clipping=100,
                               only_return_final=only_final)
    if not only_final:
        # char-RNN style: one prediction per time step
        net = L.ReshapeLayer(net, (-1, 16))
    net = L.DenseLayer(net, 10, nonlinearity=nl.softmax)
    xs = rng.rand(4, 7, 20).astype(floatX)
    n_out = 4 if only_final else 4 * 7
    ys = rng.randint(0, 10, size=n_out).astype("int32")
    compile_classifier("%s(final=%s)" % (kind, only_final), net, x, y, xs, ys)


def main():
    log("theano %s, lasagne %s, floatX=%s, blas.ldflags=%r, compiledir=%s" % (
        theano.__version__, lasagne.__version__, floatX, theano.config.blas.ldflags,
        theano.config.compiledir))
    mlp()
    for flip in (True, False):
        cnn(flip, bn=False)
    cnn(False, bn=True)
    cnn(True, bn=True)
    for kind in ("lstm", "gru", "rnn"):
        rnn(kind, only_final=True)
    rnn("lstm", only_final=False)
    # id the entrypoint uses to decide whether a user's copy is current
    base = theano.config.base_compiledir
    with open(os.path.join(base, ".seed-id"), "w") as f:
        f.write(uuid.uuid4().hex + "\n")
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
