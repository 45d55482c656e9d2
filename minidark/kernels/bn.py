"""Batch normalization as darknet computes it on the CPU (batchnorm_layer.c).

Shared by [connected], [convolutional] and [batchnorm]. Arrays are viewed
as ``(batch, C, S)`` with ``S = out_h * out_w`` (1 for connected); statistics
run over batch and spatial positions, ``N = batch * S``.

Forward, training::

    mean = sum(x) / N;   var = sum((x - mean)^2) / (N - 1)       (unbiased)
    rolling_mean = .99 rolling_mean + .01 mean   (likewise rolling_variance)
    x_norm = (x - mean) / (sqrt(var) + 1e-6)
    y = scales * x_norm + biases

Inference uses the rolling statistics in the same formula (and its backward,
which darknet never runs, is the exact affine derivative). Backward, with
``delta`` = -dL/dy and ``v = var + 1e-5``::

    bias_updates  += sum(delta);   scale_updates += sum(delta * x_norm)
    delta *= scales
    mean_delta = -sum(delta) / sqrt(v)
    var_delta  = sum(delta * (x - mean)) * -1/2 * v^(-3/2)
    delta = delta / sqrt(v) + var_delta * 2 (x - mean) / N + mean_delta / N

darknet's two epsilons (``sqrt(var) + 1e-6`` forward, ``sqrt(var + 1e-5)``
backward) and its ``/ N`` in the var term (the forward variance is ``/(N-1)``)
are kept for numeric compatibility; the backward is therefore not the exact
derivative of the forward: a gradient check sees a gap of e.g. ~0.29 at N = 4,
~0.017 at N = 16, ~1e-3 at N = 64 (tests/test_darknet_reference.py).
Deliberate fixes: rolling_variance starts at 1 (darknet: 0, so an untrained
net divides by 1e-6), and ``N - 1`` is clamped to 1 so batch-1 connected BN
gives var 0 instead of inf.
"""

import numpy as np

from .buffers import zeros

FORWARD_EPS, BACKWARD_EPS = 1e-6, 1e-5


def make_bn(layer, channels, spatial):
    """Allocate batch-norm parameters and caches on ``layer``."""
    shape = (layer.batch, channels, spatial)
    layer.bn_shape = shape
    layer.scales = np.ones(channels, np.float32)
    layer.scale_updates = np.zeros(channels, np.float32)
    layer.rolling_mean = np.zeros(channels, np.float32)
    layer.rolling_variance = np.ones(channels, np.float32)
    layer.mean = np.zeros(channels, np.float32)
    layer.variance = np.ones(channels, np.float32)
    layer.x = zeros(shape)
    layer.x_norm = zeros(shape)
    layer.bn_plane = zeros((channels, spatial))


def _buffer(layer, name, like):
    """The scratch array ``layer.<name>`` in the dtype of ``like`` (replaced once if
    a test converted the layer's other arrays to float64 by name)."""
    buffer = getattr(layer, name)
    if buffer.dtype != like.dtype:
        buffer = np.zeros(buffer.shape, like.dtype)
        setattr(layer, name, buffer)
    return buffer


def _plane(layer, values, like):
    """``values`` (C,) repeated over S as a (C, S) array: broadcasting a full plane
    over the batch runs ~1.7x faster than a (C, 1) column (numpy's inner loops),
    with the same result."""
    plane = _buffer(layer, "bn_plane", like)
    np.copyto(plane, values[:, None])
    return plane


def forward_bn(layer, out, train):
    """Normalize ``out`` (viewed (batch, C, S)) in place, then scale and shift."""
    out = out.reshape(layer.bn_shape)
    np.copyto(layer.x, out)
    x_norm = layer.x_norm  # computed in place: no temporaries
    if train:
        n = out.shape[0] * out.shape[2]
        np.mean(out, axis=(0, 2), out=layer.mean)
        np.subtract(out, _plane(layer, layer.mean, out), out=x_norm)  # centered
        np.einsum("bcs,bcs->c", x_norm, x_norm, out=layer.variance)
        layer.variance /= max(n - 1, 1)
        layer.rolling_mean *= 0.99
        layer.rolling_mean += 0.01 * layer.mean
        layer.rolling_variance *= 0.99
        layer.rolling_variance += 0.01 * layer.variance
        x_norm /= _plane(layer, np.sqrt(layer.variance) + FORWARD_EPS, out)
    else:
        np.subtract(out, _plane(layer, layer.rolling_mean, out), out=x_norm)
        x_norm /= _plane(layer, np.sqrt(layer.rolling_variance) + FORWARD_EPS, out)
    layer.bn_train = train
    np.multiply(x_norm, _plane(layer, layer.scales, out), out=out)
    out += _plane(layer, layer.biases, out)


def backward_bn(layer, delta):
    """Turn ``delta`` (-dL/dy, viewed (batch, C, S)) into -dL/dx in place."""
    delta = delta.reshape(layer.bn_shape)
    n = delta.shape[0] * delta.shape[2]
    layer.bias_updates += delta.sum(axis=(0, 2))
    layer.scale_updates += np.einsum("bcs,bcs->c", delta, layer.x_norm)
    if not layer.bn_train:  # inference statistics are constants: an affine map
        delta *= _plane(
            layer, layer.scales / (np.sqrt(layer.rolling_variance) + FORWARD_EPS), delta
        )
        return
    delta *= _plane(layer, layer.scales, delta)
    inv_std = 1.0 / np.sqrt(layer.variance + BACKWARD_EPS)
    centered = layer.x  # x - mean in place: backward is x's last reader before a forward
    np.subtract(layer.x, _plane(layer, layer.mean, delta), out=centered)
    mean_delta = -delta.sum(axis=(0, 2)) * inv_std
    var_delta = np.einsum("bcs,bcs->c", delta, centered) * -0.5 * inv_std**3
    delta *= _plane(layer, inv_std, delta)
    centered *= _plane(layer, var_delta * 2 / n, centered)
    delta += centered
    delta += _plane(layer, mean_delta / n, delta)
