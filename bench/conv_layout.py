"""Conv layout: digitlab's NHWC Conv2D (forward + backward with dX) vs an NCHW im2col of the same conv, alternating.

    PYTHONPATH=src .venv/bin/python bench/conv_layout.py      # conv 64@3x3 on 128 x 14x14x32 (the cnn recipe's 2nd conv)
"""
import statistics, time
import numpy as np
from numpy.lib.stride_tricks import as_strided
from digitlab.nn.layers import Conv2D
rng = np.random.default_rng(0)
N, H, C, F, k = 128, 14, 32, 64, 3
conv = Conv2D(F, k); conv.build((H, H, C), rng=rng); conv.ws = {}
x_nhwc = rng.standard_normal((N, H, H, C)).astype(np.float32)
x_nchw = np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))
W2 = np.ascontiguousarray(conv.W.transpose(2, 0, 1, 3).reshape(C * k * k, F))   # (C,k,k,F) rows
Ho = H - k + 1
cols = np.empty((N, Ho, Ho, C, k, k), np.float32)
def nhwc():
    y = conv.forward(x_nhwc); conv.backward(y, need_dx=True)
def nchw():
    sn, sc, sh, sw = x_nchw.strides
    cols[...] = as_strided(x_nchw, (N, Ho, Ho, C, k, k), (sn, sh, sw, sc, sh, sw))      # im2col
    c2 = cols.reshape(N * Ho * Ho, C * k * k)
    y = np.ascontiguousarray((c2 @ W2).reshape(N, Ho, Ho, F).transpose(0, 3, 1, 2))   # -> NCHW output
    dy = np.ascontiguousarray(y.transpose(0, 2, 3, 1)).reshape(-1, F)                 # gradient back to rows
    dW = c2.T @ dy
    dcols = (dy @ W2.T).reshape(N, Ho, Ho, C, k, k)
    dx = np.zeros_like(x_nchw)
    for i in range(k):
        for j in range(k):
            dx[:, :, i:i + Ho, j:j + Ho] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
t = {"NHWC": [], "NCHW": []}
for _ in range(7):
    for name, f in (("NHWC", nhwc), ("NCHW", nchw)):
        t0 = time.perf_counter(); f(); t[name].append(time.perf_counter() - t0)
for name, v in t.items():
    print(name, "median ms", round(1000 * statistics.median(v), 1), "min", round(1000 * min(v), 1))
