"""The one place digitlab chooses its array module.

    from digitlab.nn.backend import array_module
    xp = array_module(x)          # numpy for NumPy arrays, cupy for CuPy arrays
    y = xp.maximum(x, 0)

Layers, losses and optimizers never import numpy for array math directly; they ask `array_module(x)`
for the module that owns `x`. CuPy is optional: it is imported only when a CuPy array is actually passed
in, so a GPU port is a matter of handing the network CuPy arrays.
"""

from __future__ import annotations

import numpy


def array_module(x):
    """numpy for NumPy arrays (and scalars/lists), cupy for CuPy arrays."""
    if type(x).__module__.startswith("cupy"):
        import cupy  # optional; only reached when the caller already holds a CuPy array

        return cupy
    return numpy


def to_numpy(x):
    """A NumPy array for `x` (copies device arrays to the host; NumPy arrays pass through)."""
    if type(x).__module__.startswith("cupy"):
        return x.get()
    return numpy.asarray(x)
