"""The Layer record: darknet's `layer` struct, declared in one place.

A layer is a plain record. Its ``make_*`` function fills in the fields it
needs and sets three function pointers, exactly like darknet::

    l.forward(l, net)    # reads net.input, writes l.output
    l.backward(l, net)   # reads l.delta, accumulates into net.delta (None for layer 0)
    l.update(l, args)    # applies SGD to the layer's parameters (None if it has none)

Every field any layer may carry is declared below with its default and one
comment, grouped by who uses it: the generic part (geometry, buffers, the
function pointers, what the network, the weights file, the optimiser and the
tools read) first, then the fields of particular layer families. Code reads
a field as ``l.name``, never ``getattr(l, "name", default)``: the default
lives here. A make function sets only what its layer needs; a field left at
its default means "this layer does not have it" (``None``, ``()``, ``0``
or ``False``).

Arrays are float32 and allocated in ``make``; ``(batch, outputs)`` for the
per-image buffers, NCHW views taken on the fly and never stored. A field
whose comment names a layer type is meaningful for that type only.

Recurrent layers also carry, for each sublayer ``<sub>`` and each array it
saves or updates, the alias ``<sub>_<array>`` (e.g. ``input_layer_weights``),
set by ``layers.recurrent.adopt`` so that ``saved`` can list them in
darknet's order; these names depend on the sublayers and are not declared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from .network import Network, UpdateArgs

    Array = np.ndarray
else:
    Array = Any

ForwardFn = Callable[["Layer", "Network"], None]  # forward_x(l, net) / backward_x(l, net)
UpdateFn = Callable[["Layer", "UpdateArgs"], None]  # update_x(l, args)


class Layer:
    # --- identity and geometry
    type: str = "layer"  # the section name, e.g. "convolutional"
    index: int = 0  # position in net.layers
    batch: int = 1  # rows of every per-image buffer (the network batch)
    inputs: int = 0  # values per image read from net.input
    outputs: int = 0  # values per image in l.output
    h: int = 0  # input height (0 for a flat input)
    w: int = 0  # input width
    c: int = 0  # input channels
    out_h: int = 0  # output height
    out_w: int = 0  # output width
    out_c: int = 0  # output channels

    # --- the three functions
    forward: ForwardFn | None = None  # forward_x(l, net): net.input -> l.output
    backward: ForwardFn | None = None  # backward_x(l, net): l.delta -> += net.delta, *_updates
    update: UpdateFn | None = None  # update_x(l, args); None: nothing to learn

    # --- per-image buffers
    output: Array | None = None  # (batch, outputs) what the next layer reads
    delta: Array | None = None  # (batch, outputs) -dL/d(output); zeroed before training forward
    workspace_size: int = 0  # floats of net.workspace this layer's scratch needs

    # --- layer table
    desc: str = ""  # short text for the layer table, e.g. "32 5x5/1"
    flops: int = 0  # floating point operations per image (forward)

    # --- .weights file
    saved: tuple = ()  # names of the arrays stored in .weights, in file order
    dontsave: bool = False  # [section] dontsave=1: skipped when writing .weights
    dontload: bool = False  # [section] dontload=1: skipped when reading .weights
    dontloadscales: bool = False  # [conv], [connected] dontloadscales=1: file has no BN arrays
    numload: int = 0  # [convolutional] numload=K: the file holds the first K filters only
    weights_flipped: bool = False  # [convolutional] flipped=1: file weights are (c*k*k, n)

    # --- parameters
    weights: Array | None = None  # connected (out, in); convolutional (n, c/groups, k, k) ...
    biases: Array | None = None  # one per output channel (anchors for detection heads)
    weight_updates: Array | None = None  # -dL/dweights summed over the batch, then momentum
    bias_updates: Array | None = None  # -dL/dbiases summed over the batch, then momentum
    weight_grad: Array | None = None  # scratch: this batch's weight gradient (connected, local)
    input_grad: Array | None = None  # scratch: the input gradient before it is added to net.delta
    activation: str | None = None  # activation name applied to the output ("linear", "leaky" ...)

    # --- batch norm (kernels/bn.py)
    batch_normalize: bool = False  # batch_normalize=1 in the cfg
    scales: Array | None = None  # gamma, one per channel
    scale_updates: Array | None = None  # -dL/dscales summed over the batch, then momentum
    rolling_mean: Array | None = None  # running mean used at inference
    rolling_variance: Array | None = None  # running variance used at inference
    mean: Array | None = None  # this batch's mean per channel
    variance: Array | None = None  # this batch's (unbiased) variance per channel
    x: Array | None = None  # the pre-normalisation output, kept for backward (x - mean after)
    x_norm: Array | None = None  # the normalised output, kept for backward
    bn_shape: tuple | None = None  # (batch, channels, pixels): how bn views the buffers
    bn_plane: Array | None = None  # scratch: (channels, pixels)
    bn_train: bool = False  # whether the last forward used batch statistics

    # --- optimiser (optim/sgd.py, optim/adam.py)
    learning_rate_scale: float = 1.0  # [section] learning_rate=: multiplies the net's rate
    stopbackward: bool = False  # [section] stopbackward=1: backward stops at this layer
    sgd_params: tuple = (("biases", "bias_updates"), ("scales", "scale_updates"))
    # ^ (parameter, updates) pairs sgd_update steps besides the weights (which also get decay)
    train_state: tuple = ()  # names of extra arrays a resume checkpoint must keep
    m: Array | None = None  # Adam (optim/adam.py): first moment of the weights' gradient
    v: Array | None = None  # Adam: second moment of the weights' gradient
    bias_m: Array | None = None  # Adam: first moment of the biases' gradient
    bias_v: Array | None = None  # Adam: second moment of the biases' gradient
    scale_m: Array | None = None  # Adam: first moment of the batch-norm scales' gradient
    scale_v: Array | None = None  # Adam: second moment of the batch-norm scales' gradient

    # --- graph links
    input_layers: tuple = ()  # indices of earlier layers read directly (route, shortcut)
    input_sizes: tuple = ()  # [route]: outputs per image of each input layer
    index_from: int | None = None  # [shortcut]: the layer added to the input

    # --- loss layers
    cost: float | None = None  # this layer's loss summed over the batch; None: not a loss layer
    truths: int = 0  # truth values per image the loss reads; 0: as many as outputs
    noloss: bool = False  # [softmax] noloss=1: no cost and no delta from truth
    loss: Array | None = None  # (batch, outputs) per-value loss (softmax, logistic)
    cost_type: str | None = None  # [cost]: "sse", "masked", "smooth", "L1" ...
    scale: float = 1.0  # [cost] multiplier; [dropout] 1/(1-p); [upsample], [crop] ratio
    stats: dict | None = None  # detection heads: the last pass's avg IoU, recall ... for the log

    # --- randomness
    rand: Array | None = None  # [dropout] (batch, inputs) the uniforms of the last forward
    next_rand: Array | None = None  # [dropout] uniforms to use once instead of drawing
    random: int = 0  # detection heads: random=1 resizes the input during training

    # --- gradient check hooks
    learned: dict | None = None  # {parameter: updates} checked by gradcheck, when not derivable
    gradcheck_gap: Any = None  # a KnownGap, or fn(layer, train) -> KnownGap | None

    # --- convolution-like geometry
    n: int = 0  # filters (convolutional, local, deconvolutional); anchors (detection heads)
    size: int = 0  # kernel size (convolutional, maxpool ...); window (normalization)
    stride: int = 1  # step of the window; [reorg], [upsample] factor
    pad: int = 0  # padding in pixels each side
    padding: int = 0  # [local]: padding from the cfg (pad overrides it)
    groups: int = 1  # [convolutional] filter groups; [softmax] softmax groups
    locations: int = 0  # [local]: out_h * out_w, one weight set each

    # --- conv plan (kernels/conv.py)
    direct: bool = False  # 1x1 stride-1 ungrouped: the NHWC input is the columns
    cnhw: bool = False  # darknet's CNHW column layout (few input channels)
    transposed: bool = False  # backward by convolving the padded delta
    ordered: Array | None = None  # weights reordered to (n, ky, kx, c)
    ordered_grad: Array | None = None  # weight gradient in the column order
    chunk_grad: Array | None = None  # one chunk's, one group's weight gradient
    flipped: Any = None  # conv: (k, k, n, c) weights, transposed path; [crop]: mirrored now
    flipped_grad: Array | None = None  # conv: the transposed path's (c, k, k, n) gradient
    chunk_flipped_grad: Array | None = None  # conv: one chunk's transposed gradient
    chunk: int = 0  # images per backward chunk (conv), per tiled-pool chunk (maxpool)
    forward_chunk: int = 0  # images per forward chunk (conv)
    band: int = 0  # conv: output rows per im2col band when one image's columns are too big; 0: none
    bias_plane: Array | None = None  # conv CNHW: biases broadcast over the pixels
    bias_weights: Array | None = None  # conv CNHW inference: [filters | biases], (n, k k c/g + 1)
    slots: dict | None = None  # conv: offset of each scratch array in net.workspace
    pointwise: bool = False  # conv 1x1 unpadded ungrouped: out_b = W @ x_b on the NCHW input
    winograd: int | None = 0  # conv 3x3/1: tile m of Winograd F(m,3), 0: columns; None: measure
    winograd_backward: bool | None = False  # conv Winograd layer: its backward too; None: measure
    winograd_weights: Array | None = None  # conv Winograd: U = G W Gt, ((m+2)^2, n, c)
    winograd_streamed: bool = False  # conv Winograd: inference makes U in each pass (too large)
    weights_seen: Array | None = None  # conv: the weights its derived weights were made from
    scale_seen: Array | None = None  # conv + BN: the fold scale they were made with (None: no fold)
    prepared: set | None = None  # conv: derived weights now current (folded, ordered, winograd)
    winograd_plans: dict | None = (
        None  # conv Winograd: tile m -> (images, tile rows, {slot: floats}) a piece
    )
    folded: Array | None = None  # conv + BN, 1x1 (or CNHW outside bands): scale * weights
    bn_folded: bool = False  # conv + BN: the last forward folded BN (its caches are stale)
    pool_after: Any = None  # conv: the [maxpool] right after it, windows tiling its output
    pooling: bool = False  # conv: this forward fills pool_after's output part by part

    # --- [deconvolutional], [local]
    input_cnhw: Array | None = None  # [deconvolutional]: the input as (c, pixels), for backward
    cols: Array | None = None  # [deconvolutional]: forward columns, backward D
    padded: Array | None = None  # [deconvolutional]: the padded output before cropping
    padded_shape: tuple | None = None  # [local]: (batch, h + 2p, w + 2p, c)
    result: Array | None = None  # [local]: (locations, n, batch) products

    # --- [maxpool] (kernels/pool.py)
    indexes: Array | None = None  # (batch, outputs) flat input index of each window's max
    winner: Array | None = None  # (batch, outputs) which window cell won (0: none)
    mask: Any = None  # [maxpool], [dropout]: (batch, outputs) mask; [yolo]: anchor indices
    scratch: Array | None = None  # scratch of one output's size (maxpool, gru, lstm)
    positions: Array | None = None  # int64 indexes when int32 would overflow
    complete: bool = True  # every window had a winner in the last forward
    indexed: bool = False  # [maxpool]: indexes and winners belong to the last forward (training)
    offsets: list | None = None  # per window cell: the output ranges it overlaps
    corners: Array | None = None  # [maxpool] (out_h*out_w,) each window's corner in a plane
    plane_starts: Array | None = None  # [maxpool] (batch*c, 1) index of each input plane's start
    table: Array | None = None  # window cell -> offset from the corner
    tiled: bool = False  # windows tile the input exactly (size == stride)
    prepooled: bool = False  # [maxpool]: the convolution before it already wrote this output
    pool_scratch: Array | None = None  # [maxpool] after a conv: row maxima of its parts

    # --- [softmax]
    temperature: float = 1.0  # logits divided by it
    spatial: bool = False  # softmax over channels at every pixel
    tree: Any = None  # hierarchy tree (kernels/tree.py) for tree=FILE
    group_starts: Array | None = None  # first class of each tree group
    group_sizes: Array | None = None  # classes in each tree group

    # --- [dropout], [crop]
    probability: float = 0.0  # [dropout] probability of dropping a value
    angle: float = 0.0  # [crop] rotation range in degrees (training)
    saturation: float = 1.0  # [crop] saturation range (training)
    exposure: float = 1.0  # [crop] exposure range (training)
    shift: float = 0.0  # [crop] hue shift range (training)
    flip: bool = False  # [crop] flip=1: mirror half the batches
    noadjust: bool = False  # [crop] noadjust=1: keep [0, 1] instead of mapping to [-1, 1]
    multiplier: float = 1.0  # [crop] output = multiplier * input + offset
    offset: float = 0.0  # [crop] see multiplier
    dh: int = 0  # [crop] row offset of this pass's crop
    dw: int = 0  # [crop] column offset of this pass's crop

    # --- [shortcut], [normalization], [l2norm]
    alpha: float = 1.0  # [shortcut] weight of the input; [normalization] alpha
    beta: float = 1.0  # [shortcut] weight of the added layer; [normalization] beta
    kappa: float = 1.0  # [normalization] kappa
    out_part: tuple | None = None  # [shortcut] slices of the output receiving the sum
    from_part: tuple | None = None  # [shortcut] slices of the added layer read
    same_shape: bool = False  # [shortcut] both inputs have the same shape
    window_lo: Array | None = None  # [normalization] first channel summed for channel k
    window_hi: Array | None = None  # [normalization] one past the last
    reach_lo: Array | None = None  # [normalization] first channel whose window holds k
    reach_hi: Array | None = None  # [normalization] one past the last
    missing: int | None = None  # [normalization] darknet's never-added channel, if any
    norms: Array | None = None  # [normalization], [l2norm] per-position norms for backward
    sums: Array | None = None  # [normalization] scratch: prefix sums over channels
    dots: Array | None = None  # [l2norm] scratch: sum over channels of output * delta

    # --- [reorg], [upsample]
    reverse: bool = False  # the inverse reshuffle (reorg) / downsample (upsample)
    flatten: bool = False  # [reorg] flatten=1: (c, h*w) <-> (h*w, c)
    extra: int = 0  # [reorg] extra=N: N trailing values after the copied input

    # --- detection heads ([detection], [region], [yolo])
    classes: int = 0  # object classes
    coords: int = 0  # box coordinates per prediction (4)
    max_boxes: int = 0  # truth boxes per image
    jitter: float = 0.0  # data augmentation jitter (read by the loader)
    rescore: bool = False  # objectness target is the IoU instead of 1
    softmax: bool = False  # softmax over the class scores
    sqrt: bool = False  # [detection], [region] predict sqrt of width and height
    side: int = 0  # [detection] grid cells per side
    forced: int = 0  # [detection] forced=N: darknet's forced-box modes
    reorg: int = 0  # [detection] reorg=1 (read, as darknet)
    coord_scale: float = 1.0  # weight of the box loss
    object_scale: float = 1.0  # weight of the objectness loss where an object is
    noobject_scale: float = 1.0  # weight of the objectness loss where none is
    class_scale: float = 1.0  # weight of the class loss
    mask_scale: float = 1.0  # [region] weight of the mask loss
    background: bool = False  # [region] background class
    absolute: int = 0  # [region] absolute=1 box targets
    bias_match: bool = False  # [region] match truth boxes to anchors by shape only
    classfix: int = 0  # [region] classfix (read, as darknet)
    log: int = 0  # [region] log (read, as darknet)
    thresh: float = 0.5  # [region] IoU above which a prediction is not "no object"
    softmax_tree: Any = None  # [region] hierarchy tree for tree=FILE
    map: Array | None = None  # [region], [yolo] class remapping from map=FILE
    total: int = 0  # [yolo] anchors listed (mask picks n of them)
    mask_slot: Array | None = None  # [yolo] anchor index -> its slot in mask, or -1
    ignore_thresh: float = 0.5  # [yolo] IoU above which a prediction is not penalised
    truth_thresh: float = 1.0  # [yolo] IoU above which a prediction is a positive

    # --- recurrent ([rnn], [gru], [lstm]; layers/recurrent.py)
    steps: int | None = None  # time steps per batch (the network's time_steps)
    sublayers: dict | None = None  # {name: Layer} of the sublayers owned, .weights order
    carried: tuple = ()  # names of arrays holding state across batches (reset_state zeroes them)
    step_fields: tuple = ()  # sublayer: the buffers re-pointed at each time step
    output_steps: Array | None = None  # sublayer: (T, B, outputs) output of every step
    delta_steps: Array | None = None  # sublayer: (T, B, outputs) delta of every step
    x_steps: Array | None = None  # sublayer with batch norm: x of every step
    x_norm_steps: Array | None = None  # sublayer with batch norm: x_norm of every step
    mean_steps: Array | None = None  # sublayer with batch norm: mean of every step
    variance_steps: Array | None = None  # sublayer with batch norm: variance of every step
    input_grad_steps: Array | None = None  # sublayer: (T*B, inputs) input gradient, all steps
    fused: bool = False  # [rnn], [gru], [lstm] without BN: non-recurrent sublayers in one GEMM
    shortcut: bool = False  # [rnn] shortcut=1: the input is added to the state
    state: Array | None = None  # [rnn], [crnn] (T+1, B, H) states; [gru] (B, H) carried
    hidden: Array | None = None  # [rnn], [crnn], [lstm] (B, H) state carried across batches
    hidden_filters: int = 0  # [crnn] channels of the hidden state
    step_forward: ForwardFn | None = None  # [rnn], [crnn] one time step's forward
    step_backward: ForwardFn | None = None  # [rnn], [crnn] one time step's backward
    prev_state: Array | None = None  # [gru], [lstm] state before the first step, for backward
    h_prev: Array | None = None  # [gru], [lstm] (T, B, H) h_{t-1} of every step: the w-inputs
    tanh: bool = False  # [gru] tanh=1: tanh candidate activation
    candidate: str | None = None  # [gru] the candidate's activation name
    z: Array | None = None  # [gru] update gate of every step
    r: Array | None = None  # [gru] reset gate of every step
    candidate_out: Array | None = None  # [gru] candidate state of every step
    forgot_state: Array | None = None  # [gru] r * h_{t-1} of every step: wh's input
    forgot_delta: Array | None = None  # [gru] scratch: delta of r * h_{t-1}
    gates: Array | None = None  # [lstm] (4, T, B, H) f, i, g, o activations of every step
    cell: Array | None = None  # [lstm] cell state of every step
    tanh_cell: Array | None = None  # [lstm] tanh(cell) of every step
    prev_cell: Array | None = None  # [lstm] cell before the first step, for backward
    cell_state: Array | None = None  # [lstm] (B, H) cell carried across batches (darknet's c)
    dc: Array | None = None  # [lstm] -dL/dc flowing to step t-1
    dc_t: Array | None = None  # [lstm] scratch: -dL/dc at step t
    w_stacked: Array | None = None  # [lstm] (4H, H) wf wi wg wo weights; [gru] (2H, H) wz wr
    w_out: Array | None = None  # [gru], [lstm] scratch: one step's h W_stacked^T
    gate_deltas: Array | None = None  # [gru], [lstm] scratch: one step's gate deltas side by side

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def __repr__(self) -> str:
        return (
            f"<{self.type} layer {self.index}: {self.w}x{self.h}x{self.c} -> "
            f"{self.out_w}x{self.out_h}x{self.out_c}>"
        )

    @property
    def params(self) -> int:
        """Number of learnable/saved floats."""
        return sum(getattr(self, name).size for name in self.saved)
