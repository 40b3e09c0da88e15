"""digitlab's network core, in NumPy: layers, losses, initializers, optimizers, the Classifier and its files.

    import numpy as np
    from digitlab.nn import build_mlp, Classifier, get_loss, SGD
    rng = np.random.default_rng(0)
    net = Sequential([Flatten(), Linear(out_features=300), ReLU(), Linear(out_features=10)],
                     input_shape=(28, 28), rng=rng)  # or build_mlp(784, [300], 10, rng=rng) on flat inputs
    loss, opt = get_loss("softmax_ce"), SGD()
    scores = net.forward(xb)                       # (64, 28, 28) -> (64, 10)
    value, dscores = loss(scores, yb, out=scores)  # gradient written over the scores buffer
    net.backward(dscores)
    opt.step(net.parameters(), net.grads(), 0.1)
"""

from digitlab.nn.backend import array_module
from digitlab.nn.init import INITIALIZERS, initialize
from digitlab.nn.layers import (
    ACTIVATIONS, LAYER_TYPES, AvgPool2D, BatchNorm, Conv2D, Dropout, Flatten, GlobalAvgPool, LeakyReLU, Linear,
    MaxPool2D, ReLU, Sequential, Sigmoid, Tanh,
)
from digitlab.nn.losses import LOSSES, Loss, get_loss
from digitlab.nn.model import Classifier, build_linear, build_mlp, load, read_model_file
from digitlab.nn.optim import SGD, Adam, constant, cosine, make_optimizer, make_schedule, step_decay, warmup

__all__ = [
    "ACTIVATIONS", "Adam", "AvgPool2D", "BatchNorm", "Classifier", "Conv2D", "Dropout", "Flatten", "GlobalAvgPool",
    "MaxPool2D", "INITIALIZERS", "LAYER_TYPES", "LOSSES", "LeakyReLU",
    "Linear", "Loss", "ReLU", "SGD", "Sequential", "Sigmoid", "Tanh", "array_module", "build_linear",
    "build_mlp", "constant", "cosine", "get_loss", "initialize", "load", "make_optimizer", "make_schedule",
    "read_model_file", "step_decay", "warmup",
]
