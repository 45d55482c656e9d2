"""darknet's classification cfgs build with the layer sizes darknet prints.

``tests/cfg/stock/<name>.cfg`` are minidark's own cfgs with the layer structure
of darknet's ``cfg/<name>.cfg`` (cifar, tiny, darknet, darknet19, extraction,
resnet18, resnet50, densenet201, alexnet, vgg-16; alexnet and vgg-16 with
256-wide hidden connected layers instead of 4096 to stay light), plus
``mixed.cfg``, every classification layer kind at odd sizes.

Expected sizes are computed here, independently of the layer code, from
darknet's formulas applied to the parsed sections; a few rows are also
checked against tables darknet itself printed (quoted in GitHub issues).
"""

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import minidark
from minidark.cfg import read_sections
from minidark.testing import format_results, gradcheck, to_float64

STOCK = os.path.join(os.path.dirname(__file__), "cfg", "stock")
DARKNET_CFGS = [
    "cifar",
    "tiny",
    "darknet",
    "darknet19",
    "extraction",
    "resnet18",
    "resnet50",
    "densenet201",
    "alexnet",
    "vgg-16",
]
ALIASES = {
    "conv": "convolutional",
    "max": "maxpool",
    "avg": "avgpool",
    "conn": "connected",
    "soft": "softmax",
    "lrn": "normalization",
}


def path(name):
    return os.path.join(STOCK, name + ".cfg")


# ------------------------------------------------------- darknet's formulas
def expected_sizes(sections):
    """(type, out_w, out_h, out_c, outputs) per layer, by darknet's size rules."""
    net = sections[0]
    w, h, c = net.int("width", 0), net.int("height", 0), net.int("channels", 0)
    rows = []
    for s in sections[1:]:
        kind = ALIASES.get(s.type, s.type)
        if kind == "convolutional":
            size, stride = s.int("size", 1), s.int("stride", 1)
            pad = size // 2 if s.int("pad", 0) else s.int("padding", 0)
            w, h, c = (
                (w + 2 * pad - size) // stride + 1,
                (h + 2 * pad - size) // stride + 1,
                s.int("filters", 1),
            )
        elif kind == "maxpool":
            stride = s.int("stride", 1)
            size = s.int("size", stride)
            padding = s.int("padding", size - 1)
            w, h = (w + padding - size) // stride + 1, (h + padding - size) // stride + 1
        elif kind == "avgpool":
            w, h = 1, 1
        elif kind == "local":
            size, stride, pad = s.int("size", 1), s.int("stride", 1), s.int("pad", 0)
            w, h = [(x - 1 if pad else x - size) // stride + 1 for x in (w, h)]
            c = s.int("filters", 1)
        elif kind == "connected":
            w, h, c = 1, 1, s.int("output", 1)
        elif kind == "crop":
            w, h = s.int("crop_width", 1), s.int("crop_height", 1)
        elif kind == "route":
            sources = [len(rows) + i if i < 0 else i for i in s.ints("layers")]
            w, h = rows[sources[0]][1:3]
            c = sum(rows[i][3] for i in sources)
        elif kind == "upsample":
            stride = s.int("stride", 2)
            w, h = (w // -stride, h // -stride) if stride < 0 else (w * stride, h * stride)
        elif kind == "reorg":
            stride = s.int("stride", 1)
            if s.int("reverse", 0):
                w, h, c = w * stride, h * stride, c // stride**2
            else:
                w, h, c = w // stride, h // stride, c * stride**2
        # shortcut, dropout, softmax, cost, activation, lrn, l2norm, logistic,
        # batchnorm keep the previous layer's size
        rows.append((kind, w, h, c, w * h * c))
    return rows


def table(net):
    return [(l.type, l.out_w, l.out_h, l.out_c, l.outputs) for l in net.layers]


# (layer count by type) of darknet's own cfgs, to pin the architectures
STRUCTURE = {
    "cifar": {
        "convolutional": 10,
        "maxpool": 2,
        "dropout": 3,
        "avgpool": 1,
        "softmax": 1,
        "cost": 1,
    },
    "tiny": {"convolutional": 16, "maxpool": 4, "avgpool": 1, "softmax": 1},
    "darknet": {"convolutional": 8, "maxpool": 6, "avgpool": 1, "softmax": 1, "cost": 1},
    "darknet19": {"convolutional": 19, "maxpool": 5, "avgpool": 1, "softmax": 1},
    "extraction": {
        "crop": 1,
        "convolutional": 20,
        "maxpool": 4,
        "avgpool": 1,
        "connected": 1,
        "softmax": 1,
        "cost": 1,
    },
    "resnet18": {"convolutional": 18, "maxpool": 1, "shortcut": 8, "avgpool": 1, "softmax": 1},
    "resnet50": {"convolutional": 50, "maxpool": 1, "shortcut": 16, "avgpool": 1, "softmax": 1},
    "densenet201": {
        "convolutional": 201,
        "maxpool": 4,
        "route": 98,
        "avgpool": 1,
        "softmax": 1,
        "cost": 1,
    },
    "alexnet": {
        "crop": 1,
        "convolutional": 5,
        "maxpool": 3,
        "connected": 3,
        "dropout": 2,
        "softmax": 1,
        "cost": 1,
    },
    "vgg-16": {
        "crop": 1,
        "convolutional": 13,
        "maxpool": 5,
        "connected": 3,
        "dropout": 2,
        "softmax": 1,
    },
}

# The feature map entering the global average pool (or the first connected
# layer), at the cfg's own input size.
FINAL_FEATURES = {
    "cifar": (7, 7, 10),
    "tiny": (14, 14, 1000),
    "darknet": (4, 4, 1000),
    "darknet19": (8, 8, 1000),
    "extraction": (7, 7, 1024),
    "resnet18": (8, 8, 512),
    "resnet50": (8, 8, 1000),
    "densenet201": (8, 8, 1000),
    "alexnet": (7, 7, 256),
    "vgg-16": (7, 7, 512),
}


@pytest.mark.parametrize("name", DARKNET_CFGS + ["mixed"])
def test_layer_table_matches_darknets_formulas(name):
    net = minidark.load_network(path(name), batch=1)
    expected = expected_sizes(read_sections(path(name)))
    assert table(net) == expected
    for l in net.layers:
        assert l.output.shape == (1, l.outputs)


@pytest.mark.parametrize("name", DARKNET_CFGS)
def test_architecture_is_darknets(name):
    sections = read_sections(path(name))
    kinds = Counter(ALIASES.get(s.type, s.type) for s in sections[1:])
    assert kinds == Counter(STRUCTURE[name])
    rows = expected_sizes(sections)
    head = min(i for i, row in enumerate(rows) if row[0] in ("avgpool", "connected"))
    assert rows[head - 1][1:4] == FINAL_FEATURES[name]


def with_input(name, tmp_path, size):
    text = Path(path(name)).read_text().replace("height=256", f"height={size}")
    target = tmp_path / f"{name}_{size}.cfg"
    target.write_text(text.replace("width=256", f"width={size}"))
    return str(target)


# darknet's own printout for darknet19.cfg at 224x224 (classifier predict),
# AlexeyAB/darknet#1974: rows 0-12 as (layer, type, input, output)
DARKNET19_224 = [
    (0, "convolutional", (224, 224, 3), (224, 224, 32)),
    (1, "maxpool", (224, 224, 32), (112, 112, 32)),
    (2, "convolutional", (112, 112, 32), (112, 112, 64)),
    (3, "maxpool", (112, 112, 64), (56, 56, 64)),
    (4, "convolutional", (56, 56, 64), (56, 56, 128)),
    (5, "convolutional", (56, 56, 128), (56, 56, 64)),
    (6, "convolutional", (56, 56, 64), (56, 56, 128)),
    (7, "maxpool", (56, 56, 128), (28, 28, 128)),
    (8, "convolutional", (28, 28, 128), (28, 28, 256)),
    (9, "convolutional", (28, 28, 256), (28, 28, 128)),
    (10, "convolutional", (28, 28, 128), (28, 28, 256)),
    (11, "maxpool", (28, 28, 256), (14, 14, 256)),
    (12, "convolutional", (14, 14, 256), (14, 14, 512)),
]

# darknet's printout for resnet50.cfg at 256x256, AlexeyAB/darknet#7250: rows
# 0-5 (the shortcut adds the 64-channel maxpool output onto 256 channels)
RESNET50_256 = [
    (0, "convolutional", (256, 256, 3), (128, 128, 64)),
    (1, "maxpool", (128, 128, 64), (64, 64, 64)),
    (2, "convolutional", (64, 64, 64), (64, 64, 64)),
    (3, "convolutional", (64, 64, 64), (64, 64, 64)),
    (4, "convolutional", (64, 64, 64), (64, 64, 256)),
    (5, "shortcut", None, (64, 64, 256)),
]


@pytest.mark.parametrize(
    "name, size, rows", [("darknet19", 224, DARKNET19_224), ("resnet50", 256, RESNET50_256)]
)
def test_rows_darknet_printed(tmp_path, name, size, rows):
    net = minidark.load_network(with_input(name, tmp_path, size), batch=1)
    for index, kind, inputs, outputs in rows:
        l = net.layers[index]
        assert l.type == kind
        if inputs:
            assert (l.w, l.h, l.c) == inputs
        assert (l.out_w, l.out_h, l.out_c) == outputs
    if name == "resnet50":
        assert net.layers[5].input_layers == (1,)


def array_bytes(net, workspace=False):
    """Bytes of every distinct array held by the network and its layers."""
    seen = {}
    for holder in [net] + list(net.layers):
        for key, value in vars(holder).items():
            if isinstance(value, np.ndarray) and (workspace or key != "workspace"):
                base = value if value.base is None else value.base
                seen[id(base)] = base.nbytes
    return sum(seen.values())


@pytest.mark.parametrize("name", ["cifar", "alexnet", "resnet18", "tiny"])
def test_memory_is_proportional_to_batch(name):
    nets = {b: minidark.load_network(path(name), batch=b) for b in (1, 2, 3)}
    size = {b: array_bytes(net) for b, net in nets.items()}
    per_image = size[2] - size[1]
    assert per_image > 0
    assert size[3] - size[2] == per_image  # fixed + batch * per_image
    for b, net in nets.items():
        assert net.batch == b
        assert all(l.batch == b and l.output.shape[0] == b for l in net.layers)
        assert net.workspace.nbytes <= b * nets[1].workspace.nbytes
        assert net.input_buffer.shape[0] == b


def test_batch_override_does_not_allocate_the_cfg_batch(tmp_path):
    # cifar.cfg says batch=128: loading it with batch=1 must cost what batch=1 costs
    text = Path(path("cifar")).read_text()
    assert "batch=128" in text
    one = tmp_path / "cifar1.cfg"
    one.write_text(text.replace("batch=128", "batch=1"))
    overridden = minidark.load_network(path("cifar"), batch=1)
    assert array_bytes(overridden, True) == array_bytes(minidark.load_network(str(one)), True)
    assert overridden.subdivisions == 1


@pytest.mark.parametrize("name", ["darknet19", "resnet18"])
def test_forward_224_image(tmp_path, name):
    net = minidark.load_network(with_input(name, tmp_path, 224), batch=1, seed=0)
    image = np.random.default_rng(0).uniform(0, 1, (1, 3, 224, 224)).astype(np.float32)
    out = net.forward(image)
    assert out.shape == (1, 1000)
    assert np.isfinite(out).all() and out.min() >= 0
    assert out.sum() == pytest.approx(1.0, abs=1e-4)
    assert net.layers[-3].out_w == net.layers[-3].out_h == (7 if name == "darknet19" else 1)
    np.testing.assert_allclose(net.predict(image), out, rtol=1e-5, atol=1e-7)


def test_mixed_network_gradcheck():
    results = gradcheck(path("mixed"))
    assert {r.type for r in results} >= {
        "crop",
        "normalization",
        "local",
        "route",
        "shortcut",
        "upsample",
        "l2norm",
        "reorg",
        "logistic",
    }
    assert all(r.passed for r in results), format_results(results)


def test_mixed_network_end_to_end_gradient():
    """Through the real forward/backward loops (route and shortcut fan-out), the
    weight updates of the first convolution are -d cost / d weights."""
    net = to_float64(minidark.load_network(path("mixed"), seed=0))
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (net.batch, net.inputs))
    truth = rng.uniform(0, 1, (net.batch, net.outputs))

    def cost():
        net.seed(3)  # the same crop window every time
        net.forward(x, truth, train=True)
        return sum(l.cost for l in net.layers if l.cost is not None)

    conv, local = net.layers[1], net.layers[4]
    for l in net.layers:
        for name in ("weight_updates", "bias_updates"):
            if getattr(l, name, None) is not None:
                getattr(l, name).fill(0)
    cost()
    net.backward()
    for layer, array, updates in (
        (conv, "weights", "weight_updates"),
        (local, "weights", "weight_updates"),
        (conv, "biases", "bias_updates"),
    ):
        flat, analytic = getattr(layer, array).reshape(-1), getattr(layer, updates).reshape(-1)
        picks = rng.choice(flat.size, min(12, flat.size), replace=False)
        numeric = []
        for i in picks:
            keep = flat[i]
            flat[i] = keep + 1e-6
            plus = cost()
            flat[i] = keep - 1e-6
            minus = cost()
            flat[i] = keep
            numeric.append(-(plus - minus) / 2e-6)
        np.testing.assert_allclose(
            analytic[picks], numeric, rtol=1e-4, atol=1e-6 * np.abs(numeric).max()
        )
