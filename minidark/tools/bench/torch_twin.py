"""The PyTorch twin of a minidark Network: the same layers as torch modules,
built from the *parsed* Network (its resolved sizes, padding and settings),
with minidark's initial weights copied in and darknet's SGD as the optimiser.
"""

from .common import TORCH_ACTIVATIONS, UnsupportedForTorch


class TorchNet:
    """``model`` (nn.Sequential, input rows -> logits), ``pairs`` of
    (minidark layer, Linear/Conv2d, BatchNorm or None) for weight copies and
    the optimiser, and the training settings taken from the Network."""

    def __init__(self, model, pairs, net, outputs):
        self.model, self.pairs, self.outputs = model, pairs, outputs
        self.learning_rate = net.current_rate()
        self.momentum, self.decay = net.momentum, net.decay
        self.subdivisions = net.subdivisions
        self.loss_scale = 1.0  # 1 + the scales of [cost] sse layers after the softmax
        config = net.config
        self.adam = bool(config.adam) if config is not None else False
        if self.adam:  # darknet's Adam on summed gradients = torch's on the mean, eps / B
            self.betas, self.eps = (config.B1, config.B2), config.eps / net.images_per_update

    def copy_weights_from(self, net=None):
        """Copy weights, biases and BN statistics from the minidark layers."""
        import torch

        with torch.no_grad():
            for layer, module, bn in self.pairs:
                module.weight.copy_(torch.from_numpy(layer.weights).reshape(module.weight.shape))
                if bn is None:
                    module.bias.copy_(torch.from_numpy(layer.biases))
                else:
                    bn.weight.copy_(torch.from_numpy(layer.scales))
                    bn.bias.copy_(torch.from_numpy(layer.biases))
                    bn.running_mean.copy_(torch.from_numpy(layer.rolling_mean))
                    bn.running_var.copy_(torch.from_numpy(layer.rolling_variance))

    def optimizer(self):
        """darknet's SGD: momentum on everything, decay on weights only, per-layer
        learning_rate scales (kept as each group's ``lr_scale``); groups with
        equal settings are merged. With adam=1, torch's Adam with darknet's
        betas, ``eps / B`` and decay on every parameter (optim/adam.py)."""
        import torch

        groups = {}
        for layer, module, bn in self.pairs:
            scale = layer.learning_rate_scale
            no_decay = [module.bias] if bn is None else [bn.weight, bn.bias]
            groups.setdefault((scale, self.decay), []).append(module.weight)
            # darknet's Adam decays biases and scales too (adam_update_gpu on each)
            groups.setdefault((scale, self.decay if self.adam else 0.0), []).extend(no_decay)
        params = [
            {"params": p, "lr": self.learning_rate * scale, "lr_scale": scale, "weight_decay": wd}
            for (scale, wd), p in groups.items()
            if p
        ]
        if self.adam:  # torch's Adam: L2 decay added to the gradient, as darknet's
            return torch.optim.Adam(params, lr=self.learning_rate, betas=self.betas, eps=self.eps)
        return torch.optim.SGD(
            params, lr=self.learning_rate, momentum=self.momentum, weight_decay=0.0
        )

    @staticmethod
    def set_learning_rate(optimizer, rate):
        """The net's rate for the next step, times each group's layer scale."""
        for group in optimizer.param_groups:
            group["lr"] = rate * group["lr_scale"]

    def loss(self, logits, labels):
        """Mean cross-entropy, divided by subdivisions as darknet's B = batch * subdivisions."""
        import torch.nn.functional as F

        loss = F.cross_entropy(logits, labels)
        if self.loss_scale != 1:
            loss = loss * self.loss_scale
        return loss / self.subdivisions if self.subdivisions != 1 else loss


def _torch_activation(name, where, inplace=True):
    from torch import nn

    if name == "linear":
        return None
    if name == "relu":
        return nn.ReLU(inplace=inplace)
    if name == "leaky":
        return nn.LeakyReLU(0.1, inplace=inplace)
    if name == "logistic":
        return nn.Sigmoid()
    if name == "tanh":
        return nn.Tanh()
    raise UnsupportedForTorch(
        f"{where}: activation '{name}' is unsupported for torch "
        f"comparison (supported: {', '.join(TORCH_ACTIVATIONS)})"
    )


def _conv_modules(l, where):
    """Conv2d (+ BatchNorm2d) with the padding minidark resolved (``l.pad``)."""
    from torch import nn

    size, stride, pad, groups = l.size, l.stride, l.pad, l.groups
    if ((l.h + 2 * pad - size) // stride + 1, (l.w + 2 * pad - size) // stride + 1) != (
        l.out_h,
        l.out_w,
    ):
        raise UnsupportedForTorch(
            f"{where}: cannot reproduce its output {l.out_w}x{l.out_h}"
            f"x{l.out_c} from size {size}, stride {stride}, pad {pad}; "
            f"unsupported for torch comparison"
        )
    conv = nn.Conv2d(l.c, l.n, size, stride, pad, groups=groups, bias=not l.batch_normalize)
    norm = nn.BatchNorm2d(l.n, eps=1e-5, momentum=0.01) if l.batch_normalize else None
    return conv, norm


def _maxpool_modules(l, where):
    """darknet: out = (w + padding - size) // stride + 1, windows start at
    -padding // 2 + i * stride, out-of-image values are -inf (``l.pad`` is
    darknet's total padding)."""
    from torch import nn

    size, stride, total = l.size, l.stride, l.pad
    left = total // 2

    def torch_out(n, ceil):  # PyTorch's pooling output size (symmetric padding `left`)
        span = n + 2 * left - size
        out = (-(-span // stride) if ceil else span // stride) + 1
        if ceil and (out - 1) * stride >= n + left:
            out -= 1
        return out

    if left <= size // 2:
        for ceil in (False, True):  # same window starts; pick the matching count
            if (torch_out(l.h, ceil), torch_out(l.w, ceil)) == (l.out_h, l.out_w):
                return [nn.MaxPool2d(size, stride, padding=left, ceil_mode=ceil)]
    return [
        nn.ConstantPad2d((left, total - left, left, total - left), float("-inf")),
        nn.MaxPool2d(size, stride),
    ]


def build_torch_model(net, copy_weights=True):
    """The same network in PyTorch (a TorchNet), from a parsed minidark Network.

    Raises UnsupportedForTorch naming the layer when a layer, activation or
    option has no exact PyTorch equivalent here.
    """
    import torch
    from torch import nn

    modules, pairs = [], []
    image = None  # (c, h, w) while the tensor is NCHW, None when flat
    layers = list(net.layers)
    head, cost_scale = None, 0.0
    for i, l in enumerate(layers):
        where = f"layer {i} [{l.type}]"
        kind = {
            "conv": "convolutional",
            "max": "maxpool",
            "avg": "avgpool",
            "conn": "connected",
            "soft": "softmax",
        }.get(l.type, l.type)
        if head is not None and kind == "cost" and l.cost_type == "sse":
            # darknet's cifar.cfg: [softmax] passes its delta through, so an sse
            # cost on the probabilities adds scale * (truth - p) to softmax's own
            # truth - p: (1 + scale) times cross-entropy's gradient on the logits
            cost_scale += l.scale
            continue
        if head is not None:
            raise UnsupportedForTorch(
                f"{where}: layers after the softmax head are unsupported for torch comparison"
            )
        if kind in ("convolutional", "maxpool", "avgpool") and image is None:
            if not (l.c and l.h and l.w) or l.c * l.h * l.w != l.inputs:
                raise UnsupportedForTorch(
                    f"{where}: a non-image input is unsupported for torch comparison"
                )
            modules.append(nn.Unflatten(1, (l.c, l.h, l.w)))
            image = (l.c, l.h, l.w)
        if kind == "convolutional":
            conv, norm = _conv_modules(l, where)
            modules += [m for m in (conv, norm) if m is not None]
            act = _torch_activation(l.activation, where)
            modules += [act] if act is not None else []
            pairs.append((l, conv, norm))
            image = (l.out_c, l.out_h, l.out_w)
        elif kind == "maxpool":
            modules += _maxpool_modules(l, where)
            image = (l.out_c, l.out_h, l.out_w)
        elif kind == "avgpool":
            if l.outputs != l.c:
                raise UnsupportedForTorch(
                    f"{where}: non-global average pooling is unsupported for torch comparison"
                )
            modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            image = None
        elif kind == "connected":
            if image is not None:
                modules.append(nn.Flatten())
                image = None
            bn = l.batch_normalize
            linear = nn.Linear(l.inputs, l.outputs, bias=not bn)
            norm = nn.BatchNorm1d(l.outputs, eps=1e-5, momentum=0.01) if bn else None
            modules += [m for m in (linear, norm) if m is not None]
            act = _torch_activation(l.activation, where)
            modules += [act] if act is not None else []
            pairs.append((l, linear, norm))
        elif kind == "dropout":
            modules.append(nn.Dropout(l.probability))
        elif kind == "activation":
            act = _torch_activation(l.activation, where, inplace=False)
            modules += [act] if act is not None else []
        elif kind == "softmax":
            if l.groups != 1 or l.temperature != 1 or l.tree is not None or l.spatial:
                raise UnsupportedForTorch(
                    f"{where}: groups, temperature, tree and spatial are "
                    f"unsupported for torch comparison (only the "
                    f"defaults)"
                )
            head = l
        else:
            raise UnsupportedForTorch(
                f"{where}: layer type '{l.type}' is unsupported for torch comparison "
                f"(supported: connected, convolutional, maxpool, avgpool, dropout, "
                f"activation, softmax)"
            )
    if head is None:
        raise UnsupportedForTorch(
            "a network without a [softmax] head is unsupported for "
            "torch comparison (the head maps to cross_entropy)"
        )
    if image is not None:
        modules.append(nn.Flatten())
    model = nn.Sequential(*modules)
    twin = TorchNet(model, pairs, net, head.inputs)
    twin.loss_scale = 1.0 + cost_scale
    if copy_weights:
        twin.copy_weights_from(net)
    with torch.no_grad():  # the shapes must agree layer by layer: check the end
        model.eval()
        out = model(torch.zeros(1, net.inputs))
        model.train()
    if tuple(out.shape) != (1, head.inputs):
        raise UnsupportedForTorch(
            f"torch model gives {tuple(out.shape)[1:]} outputs, "
            f"minidark {head.inputs}: unsupported for torch comparison"
        )
    return twin
