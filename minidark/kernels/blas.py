"""darknet's tiny BLAS vocabulary, in place on numpy arrays.

Update rules read like algebra with these (``axpy(lr / batch, updates, w)``).
``x`` and ``y`` must hold the same number of elements; shapes may differ
(a ``(batch, outputs)`` delta and a ``(batch, c, h, w)`` one are the same
buffer to darknet).
"""

import numpy as np


def _same(x, y):
    return x if x.shape == y.shape else x.reshape(y.shape)


def axpy(a, x, y):
    """y += a * x."""
    x = _same(x, y)
    if a == 1:
        np.add(y, x, out=y)
    else:
        y += np.float32(a) * x if y.dtype == np.float32 else a * x


def scal(a, x):
    """x *= a."""
    x *= a
