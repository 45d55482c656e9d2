"""darknet's SGD step (update_connected_layer / update_convolutional_layer).

With ``rate = learning_rate * layer_scale / B`` (B = batch * subdivisions),
momentum ``m`` and decay ``d``, in this order::

    biases  += rate * bias_updates;   bias_updates  *= m
    scales  += rate * scale_updates;  scale_updates *= m      (batch norm only)
    weight_updates += -d * B * weights                        (decay folded in)
    weights += rate * weight_updates; weight_updates *= m

The ``*_updates`` buffers are never zeroed: they decay by ``m`` and the next
backward adds the new batch's summed negative gradient to them. For weights
this is ``torch.optim.SGD(lr, momentum=m, weight_decay=d)`` on the mean loss;
biases and scales get momentum but no decay.
"""

from ..kernels.blas import axpy, scal


def sgd_update(layer, args):
    rate = args.learning_rate * layer.learning_rate_scale / args.batch
    for param, updates in layer.sgd_params:  # default: biases and scales
        values = getattr(layer, param, None)
        if values is None:
            continue
        grads = getattr(layer, updates)
        axpy(rate, grads, values)
        scal(args.momentum, grads)
    if layer.weights is not None:
        axpy(-args.decay * args.batch, layer.weights, layer.weight_updates)
        axpy(rate, layer.weight_updates, layer.weights)
        scal(args.momentum, layer.weight_updates)
