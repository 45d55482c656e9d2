"""The Layer record: darknet's `layer` struct, minus the god-struct.

A layer is a plain record. Its ``make_*`` function fills in the fields it
needs and sets three function pointers, exactly like darknet::

    l.forward(l, net)    # reads net.input, writes l.output
    l.backward(l, net)   # reads l.delta, accumulates into net.delta (None for layer 0)
    l.update(l, args)    # applies SGD to the layer's parameters (None if it has none)

Fields every layer has (darknet names): ``type, index, batch, inputs, outputs,
h, w, c, out_h, out_w, out_c, output, delta``. Parameterised layers add
``weights, biases, weight_updates, bias_updates`` (and ``scales``,
``rolling_mean``, ``rolling_variance``, ``scale_updates`` with batch norm).
``saved`` lists, in file order, the attribute names of the arrays that
darknet's ``.weights`` format stores for this layer.
"""


class Layer:
    # Defaults shared by every layer; a make function overrides what it needs.
    type = "layer"
    index = 0
    batch = 1
    inputs = outputs = 0
    h = w = c = 0
    out_h = out_w = out_c = 0
    output = None
    delta = None
    forward = None
    backward = None
    update = None
    cost = None            # float: this layer's loss summed over the batch (loss layers only)
    saved = ()             # names of arrays in .weights order
    desc = ""              # short text for the layer table, e.g. "32 5x5/1"
    flops = 0              # floating point operations per image (forward)
    stopbackward = False
    learning_rate_scale = 1.0
    dontsave = dontload = False
    carried = ()           # names of arrays holding recurrent state across batches (reset_state zeroes them)
    sublayers = None       # recurrent layers: {name: Layer} of the sublayers they own, .weights order
    steps = None           # recurrent layers: time steps per batch (the network's time_steps)

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def __repr__(self):
        return (f"<{self.type} layer {self.index}: {self.w}x{self.h}x{self.c} -> "
                f"{self.out_w}x{self.out_h}x{self.out_c}>")

    @property
    def params(self):
        """Number of learnable/saved floats."""
        return sum(getattr(self, name).size for name in self.saved)
