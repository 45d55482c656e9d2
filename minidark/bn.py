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
    layer.x = np.zeros(shape, np.float32)
    layer.x_norm = np.zeros(shape, np.float32)


def forward_bn(layer, out, train):
    """Normalize ``out`` (viewed (batch, C, S)) in place, then scale and shift."""
    out = out.reshape(layer.bn_shape)
    np.copyto(layer.x, out)
    if train:
        n = out.shape[0] * out.shape[2]
        np.mean(out, axis=(0, 2), out=layer.mean)
        centered = out - layer.mean[:, None]
        np.einsum("bcs,bcs->c", centered, centered, out=layer.variance)
        layer.variance /= max(n - 1, 1)
        layer.rolling_mean *= 0.99
        layer.rolling_mean += 0.01 * layer.mean
        layer.rolling_variance *= 0.99
        layer.rolling_variance += 0.01 * layer.variance
        np.copyto(out, centered)
        out /= (np.sqrt(layer.variance) + FORWARD_EPS)[:, None]
        np.copyto(layer.x_norm, out)
    else:
        out -= layer.rolling_mean[:, None]
        out /= (np.sqrt(layer.rolling_variance) + FORWARD_EPS)[:, None]
        np.copyto(layer.x_norm, out)
    layer.bn_train = train
    out *= layer.scales[:, None]
    out += layer.biases[:, None]


def backward_bn(layer, delta):
    """Turn ``delta`` (-dL/dy, viewed (batch, C, S)) into -dL/dx in place."""
    delta = delta.reshape(layer.bn_shape)
    n = delta.shape[0] * delta.shape[2]
    layer.bias_updates += delta.sum(axis=(0, 2))
    layer.scale_updates += np.einsum("bcs,bcs->c", delta, layer.x_norm)
    if not layer.bn_train:  # inference statistics are constants: an affine map
        delta *= (layer.scales / (np.sqrt(layer.rolling_variance) + FORWARD_EPS))[:, None]
        return
    delta *= layer.scales[:, None]
    inv_std = 1.0 / np.sqrt(layer.variance + BACKWARD_EPS)
    centered = layer.x - layer.mean[:, None]
    mean_delta = -delta.sum(axis=(0, 2)) * inv_std
    var_delta = np.einsum("bcs,bcs->c", delta, centered) * -0.5 * inv_std ** 3
    delta *= inv_std[:, None]
    centered *= (var_delta * 2 / n)[:, None]
    delta += centered
    delta += (mean_delta / n)[:, None]
