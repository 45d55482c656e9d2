"""Optimisers: the one place a layer's update picks SGD or Adam."""

from .adam import adam_update
from .sgd import sgd_update


def update_parameters(layer, args):
    """Step ``layer``'s parameters: Adam when the net has adam=1, else darknet's SGD."""
    if args.adam:
        adam_update(layer, args)
    else:
        sgd_update(layer, args)
