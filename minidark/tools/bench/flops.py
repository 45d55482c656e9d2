"""FLOPs per image and the matrix products a network's layers run."""


def forward_flops(net):
    """FLOPs per image of one forward pass (sum of l.flops)."""
    return int(sum(l.flops for l in net.layers))


def training_flops(net):
    """FLOPs per image of one training step: 3x the forward (forward, input
    gradient, weight gradient), less the input gradient of layer 0, which
    neither engine computes."""
    first = net.layers[0] if net.layers else None
    skipped = (
        first.flops
        if first is not None and first.type in ("connected", "conn", "convolutional", "conv")
        else 0
    )
    return int(3 * forward_flops(net) - skipped)


def gemm_shapes(net):
    """The (m, k, n, count) matrix products of one batch, per pass:
    ``{"eval": [...], "train": [...]}``. Connected: x (B, in) @ W^T;
    convolutional: W (n/g, c/g*k*k) @ columns (c/g*k*k, B*out_hw) per group.
    Training adds the weight gradient and, except for layer 0, the input
    gradient. The eval products' 2*m*k*n sum to the layers' forward FLOPs."""
    shapes = {"eval": [], "train": []}
    for i, l in enumerate(net.layers):
        kind = {"conv": "convolutional", "conn": "connected"}.get(l.type, l.type)
        if kind == "connected":
            fwd, groups = (net.batch, l.inputs, l.outputs), 1
            wgrad, igrad = (l.outputs, net.batch, l.inputs), (net.batch, l.outputs, l.inputs)
        elif kind == "convolutional":
            groups, size = l.groups, l.size
            m, k, n = l.out_c // groups, l.c // groups * size * size, net.batch * l.out_h * l.out_w
            fwd, wgrad, igrad = (m, k, n), (m, n, k), (k, m, n)
        else:
            continue
        shapes["eval"].append(fwd + (groups,))
        shapes["train"] += [fwd + (groups,), wgrad + (groups,)]
        if i > 0:
            shapes["train"].append(igrad + (groups,))
    return shapes
