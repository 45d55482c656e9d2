"""darknet's weights verbs: ``partial``, ``reset``, ``normalize``, ``denormalize``,
``rescale``, ``rgbgr``.

    minidark partial CFG WEIGHTS OUT N     the first N layers' weights, seen reset to 0
    minidark reset CFG WEIGHTS OUT         fold batch norm into the weights, keep the layout
                                           (scales 1, rolling mean 0, rolling variance 1)
    minidark denormalize CFG WEIGHTS OUT   fold batch norm into the weights and drop it: OUT
                                           fits CFG without batch_normalize
    minidark normalize CFG WEIGHTS OUT     add identity batch norm to layers without it: OUT
                                           fits CFG with batch_normalize=1 on them
    minidark rescale CFG WEIGHTS OUT       first [convolutional]: a net fed [-1, 1] pixels
                                           becomes one fed [0, 1] pixels
    minidark rgbgr CFG WEIGHTS OUT         first [convolutional]: swap the R and B input
                                           channels (a BGR-trained net for RGB input)

Folding uses minidark's inference normalisation, ``(x - mean) / (sqrt(var) + 1e-6)``,
so the folded network computes what the original did (darknet's
denormalize_convolutional_layer uses ``sqrt(var + 1e-5)``, a slightly different
function). ``normalize`` writes rolling variance 1 where darknet's normalize_layer
leaves 0 (calloc), which its own forward turns into a 1e6 gain.

``rescale`` and ``rgbgr`` change only filters with 3 input channels, as darknet's
rescale_weights / rgbgr_weights; where darknet then writes the file unchanged
(no [convolutional] layer, or not 3 channels per filter) minidark says so and
writes nothing.
"""

import struct

import numpy as np

from ..errors import DataError, printable
from .base import add_command, check_file_kinds

BN = ("scales", "rolling_mean", "rolling_variance")
FOLDABLE = ("convolutional", "connected")


def fold_batch_norm(layer):
    """weights *= s, biases -= mean * s, with s = scales / (sqrt(var) + eps) per
    output; then scales 1, rolling mean 0, rolling variance 1."""
    from ..kernels.bn import FORWARD_EPS

    scale = layer.scales / (np.sqrt(layer.rolling_variance) + np.float32(FORWARD_EPS))
    layer.weights *= scale.reshape((-1,) + (1,) * (layer.weights.ndim - 1))
    layer.biases -= layer.rolling_mean * scale
    layer.scales.fill(1)
    layer.rolling_mean.fill(0)
    layer.rolling_variance.fill(1)


def file_layout(layer, batch_normalize):
    """The arrays ``layer`` writes, in darknet's order, with or without batch norm."""
    if layer.type not in FOLDABLE or batch_normalize == layer.batch_normalize:
        return [getattr(layer, name) for name in layer.saved]
    n = layer.out_c if layer.type == "convolutional" else layer.outputs
    bn = [np.ones(n, np.float32), np.zeros(n, np.float32), np.ones(n, np.float32)]
    if not batch_normalize:
        bn = []
    if layer.type == "convolutional":
        return [layer.biases, *bn, layer.weights]
    return [layer.biases, layer.weights, *bn]


def write_layout(net, path, batch_normalize):
    """Save ``net``; ``batch_normalize(layer)`` picks a [convolutional] or
    [connected] layer's layout (others keep theirs)."""
    from ..weights import MAJOR, MINOR, REVISION, atomic_write

    parts = [struct.pack("<iiiQ", MAJOR, MINOR, REVISION, int(net.seen))]
    for layer in net.layers:
        if layer.saved and not layer.dontsave:
            for array in file_layout(layer, batch_normalize(layer)):
                parts.append(np.ascontiguousarray(array, dtype="<f4").tobytes())
    atomic_write(path, b"".join(parts))


RESCALE, SHIFT = 2.0, -0.5  # darknet's rescale_net: rescale_weights(l, 2, -.5)


def first_rgb_convolution(net, usage):
    """The first [convolutional] layer (darknet's rescale_net / rgbgr_net stop
    there); a DataError unless its filters see 3 channels."""
    layer = next((l for l in net.layers if l.type == "convolutional"), None)
    if layer is None:
        raise DataError(f"{usage}: the network has no [convolutional] layer to change")
    if layer.weights.shape[1] != 3:
        raise DataError(
            f"{usage}: layer {layer.index} [convolutional], the first one, has "
            f"{layer.weights.shape[1]} input channels per filter; only 3-channel (RGB) "
            f"filters can be changed"
        )
    return layer


def rescale_inputs(layer, scale=RESCALE, trans=SHIFT):
    """darknet's rescale_weights(l, scale, trans): ``layer`` now computes on pixels
    ``x`` what it computed on ``scale * (x + trans)``. With ``W' = scale * W`` per
    filter, ``W . scale (x + trans) = W' . x + trans * sum(W')``, so ``trans *
    sum(W')`` joins the bias -- or, under batch norm (which subtracts the rolling
    mean before its scale), leaves the rolling mean (darknet adds it to the
    biases there too, which changes the function). Exact where the filter sees
    no zero padding (padding stays 0, not ``scale * trans``)."""
    layer.weights *= np.float32(scale)
    offset = np.float32(trans) * layer.weights.sum(axis=(1, 2, 3), dtype=np.float32)
    if layer.batch_normalize:
        layer.rolling_mean -= offset
    else:
        layer.biases += offset


def swap_red_blue(layer):
    """Swap input channels 0 and 2 of every filter (darknet's rgbgr_image on each)."""
    layer.weights[:, [0, 2]] = layer.weights[:, [2, 0]]


def common_arguments(parser, n=False):
    parser.add_argument("cfg", metavar="CFG", help="network .cfg or .yaml")
    parser.add_argument("weights", metavar="WEIGHTS", help="darknet .weights to read")
    parser.add_argument("out", metavar="OUT", help=".weights file to write")
    if n:
        parser.add_argument("n", metavar="N", type=int, help="layers to keep (0..N-1)")


def load(args, usage):
    import minidark

    check_file_kinds(usage, [("CFG", args.cfg, "cfg"), ("WEIGHTS", args.weights, "weights")])
    return minidark.load_network(args.cfg, args.weights, batch=1)


def run_partial(args):
    from ..weights import save_weights

    net = load(args, "minidark partial CFG WEIGHTS OUT N")
    if not 0 <= args.n <= len(net.layers):
        raise DataError(f"N must be between 0 and the {len(net.layers)} layers, got {args.n}")
    net.seen = 0  # darknet's partial loads with clear=1
    save_weights(net, args.out, cutoff=args.n)
    kept = sum(1 for layer in net.layers[: args.n] if layer.saved and not layer.dontsave)
    print(f"wrote {printable(args.out)}: layers 0-{args.n - 1}, {kept} with weights")
    return 0


def run_reset(args):
    from ..weights import save_weights

    net = load(args, "minidark reset CFG WEIGHTS OUT")
    folded = [l for l in net.layers if l.type in FOLDABLE and l.batch_normalize]
    for layer in folded:
        fold_batch_norm(layer)
    save_weights(net, args.out)
    print(f"wrote {printable(args.out)}: batch norm folded into {len(folded)} layers")
    return 0


def run_denormalize(args):
    net = load(args, "minidark denormalize CFG WEIGHTS OUT")
    folded = [l for l in net.layers if l.type in FOLDABLE and l.batch_normalize]
    for layer in folded:
        fold_batch_norm(layer)
    write_layout(net, args.out, lambda layer: False)
    print(
        f"wrote {printable(args.out)}: batch norm folded into and removed from "
        f"{len(folded)} layers (use it with batch_normalize=0 on them)"
    )
    return 0


def run_normalize(args):
    net = load(args, "minidark normalize CFG WEIGHTS OUT")
    added = [l for l in net.layers if l.type in FOLDABLE and not l.batch_normalize]
    write_layout(net, args.out, lambda layer: True)
    print(
        f"wrote {printable(args.out)}: identity batch norm added to {len(added)} layers "
        f"(use it with batch_normalize=1 on them)"
    )
    return 0


def run_rescale(args):
    from ..weights import save_weights

    usage = "minidark rescale CFG WEIGHTS OUT"
    net = load(args, usage)
    layer = first_rgb_convolution(net, usage)
    rescale_inputs(layer)
    save_weights(net, args.out)
    print(
        f"wrote {printable(args.out)}: layer {layer.index} [convolutional] takes pixels in "
        f"[0, 1] where it took [-1, 1] (weights x{RESCALE:g}, offset {SHIFT:g} x their sum)"
    )
    return 0


def run_rgbgr(args):
    from ..weights import save_weights

    usage = "minidark rgbgr CFG WEIGHTS OUT"
    net = load(args, usage)
    layer = first_rgb_convolution(net, usage)
    swap_red_blue(layer)
    save_weights(net, args.out)
    print(
        f"wrote {printable(args.out)}: layer {layer.index} [convolutional] with its "
        f"red and blue input channels swapped"
    )
    return 0


add_command(
    "partial",
    "save the first N layers' weights (a backbone for a new head), seen reset to 0",
    lambda p: common_arguments(p, n=True),
    run_partial,
)
add_command(
    "reset", "fold batch norm into the weights (identity statistics)", common_arguments, run_reset
)
add_command(
    "denormalize",
    "fold batch norm into the weights and drop it from the file",
    common_arguments,
    run_denormalize,
)
add_command(
    "normalize", "add identity batch norm to layers without it", common_arguments, run_normalize
)
add_command(
    "rescale",
    "first convolution: take pixels in [0, 1] where the net was trained on [-1, 1]",
    common_arguments,
    run_rescale,
)
add_command(
    "rgbgr",
    "first convolution: swap the red and blue input channels (BGR <-> RGB)",
    common_arguments,
    run_rgbgr,
)
