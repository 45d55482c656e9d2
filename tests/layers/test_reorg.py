"""[reorg]: darknet's reorg_cpu shuffle, flatten and extra (reorg_layer.c)."""

import textwrap

import numpy as np
import pytest

import minidark
from minidark.errors import ConfigError
from minidark.testing import format_results, gradcheck


def build(tmp_path, text, **kwargs):
    path = tmp_path / "net.cfg"
    path.write_text(textwrap.dedent(text))
    return minidark.load_network(str(path), **kwargs)


def cfg(options, h=4, w=6, c=8, batch=2):
    return f"[net]\nbatch={batch}\nheight={h}\nwidth={w}\nchannels={c}\n\n[reorg]\n{options}\n"


def reorg_cpu(x, w, h, c, batch, stride, forward, out):
    """darknet's blas.c:reorg_cpu, loop for loop, on flat arrays."""
    out_c = c // (stride * stride)
    for b in range(batch):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * (k + c * b))
                    c2 = k % out_c
                    offset = k // out_c
                    w2 = i * stride + offset % stride
                    h2 = j * stride + offset // stride
                    out_index = w2 + w * stride * (h2 + h * stride * (c2 + out_c * b))
                    if forward:
                        out[out_index] = x[in_index]
                    else:
                        out[in_index] = x[out_index]


def flatten(x, size, layers, batch, forward):
    """darknet's blas.c:flatten."""
    swap = np.zeros_like(x)
    for b in range(batch):
        for c in range(layers):
            for i in range(size):
                i1 = b * layers * size + c * size + i
                i2 = b * layers * size + i * layers + c
                if forward:
                    swap[i2] = x[i1]
                else:
                    swap[i1] = x[i2]
    return swap


@pytest.mark.parametrize(
    "options, h, w, c, out",
    [
        ("stride=2", 4, 6, 8, (3, 2, 32)),
        ("stride=2", 26, 26, 64, (13, 13, 256)),  # YOLOv2's passthrough
        ("stride=3", 6, 9, 9, (3, 2, 81)),
        ("stride=2\nreverse=1", 4, 6, 8, (12, 8, 2)),
        ("stride=1", 3, 5, 2, (5, 3, 2)),
        ("flatten=1", 3, 5, 2, (5, 3, 2)),
        ("extra=7", 3, 5, 2, (0, 0, 0)),  # darknet's sizes with extra
    ],
)
def test_output_size(tmp_path, options, h, w, c, out):
    l = build(tmp_path, cfg(options, h, w, c, batch=1)).layers[0]
    assert (l.out_w, l.out_h, l.out_c) == out
    assert l.inputs == h * w * c
    assert l.outputs == (h * w * c + 7 if "extra" in options else h * w * c)


def test_defaults(tmp_path):
    l = build(tmp_path, cfg("")).layers[0]
    assert (l.stride, l.reverse, l.flatten, l.extra) == (1, False, False, 0)


@pytest.mark.parametrize(
    "stride, reverse, h, w, c",
    [
        (2, False, 4, 6, 8),
        (3, False, 6, 3, 18),
        (2, True, 3, 5, 8),
        (3, True, 2, 2, 18),
        (2, False, 2, 2, 4),
    ],
)
def test_forward_is_darknets_permutation(tmp_path, stride, reverse, h, w, c):
    net = build(tmp_path, cfg(f"stride={stride}\nreverse={int(reverse)}", h, w, c))
    x = np.arange(2 * h * w * c, dtype=np.float32)
    expected = np.full_like(x, -1)
    # forward_reorg_layer: reorg_cpu(input, l.w, l.h, l.c, batch, stride, reverse, output)
    reorg_cpu(x, w, h, c, 2, stride, reverse, expected)
    out = net.forward(x.reshape(2, -1)).reshape(-1)
    np.testing.assert_array_equal(out, expected)
    assert sorted(out) == sorted(x)  # a permutation


def test_reverse_is_depth_to_space_on_real_shapes(tmp_path):
    net = build(tmp_path, cfg("stride=2\nreverse=1", h=2, w=3, c=4, batch=1))
    x = np.random.default_rng(0).normal(size=(1, 4, 2, 3)).astype(np.float32)
    out = net.forward(x).reshape(1, 4, 6)
    for o in range(4):
        np.testing.assert_array_equal(out[0, o // 2 :: 2, o % 2 :: 2], x[0, o])


@pytest.mark.parametrize("reverse", [0, 1])
def test_flatten_is_darknets(tmp_path, reverse):
    net = build(tmp_path, cfg(f"flatten=1\nreverse={reverse}", 3, 5, 4))
    x = np.arange(120, dtype=np.float32)
    expected = flatten(x, 15, 4, 2, not reverse)
    np.testing.assert_array_equal(net.forward(x.reshape(2, -1)).reshape(-1), expected)


def test_extra_copies_and_pads(tmp_path):
    net = build(tmp_path, cfg("extra=3", 1, 2, 2))
    x = np.arange(8, dtype=np.float32).reshape(2, 4) + 1
    out = net.forward(x)
    np.testing.assert_array_equal(out, [[1, 2, 3, 4, 0, 0, 0], [5, 6, 7, 8, 0, 0, 0]])


@pytest.mark.parametrize(
    "options",
    [
        "stride=2",
        "stride=3",
        "stride=2\nreverse=1",
        "flatten=1",
        "flatten=1\nreverse=1",
        "extra=5",
        "stride=2\nreverse=1\nextra=2",
    ],
)
def test_gradcheck_inverse_permutation(tmp_path, options):
    net = build(tmp_path, cfg(options, h=6, w=6, c=36))
    results = gradcheck(net)
    assert all(r.passed for r in results), format_results(results)


@pytest.mark.parametrize("stride, reverse", [(2, False), (2, True)])
def test_backward_is_darknets_inverse_and_accumulates(tmp_path, stride, reverse):
    h, w, c = (4, 6, 8) if not reverse else (2, 3, 8)
    net = build(tmp_path, cfg(f"stride={stride}\nreverse={int(reverse)}", h, w, c, batch=1))
    l = net.layers[0]
    l.delta[...] = np.arange(l.outputs, dtype=np.float32)
    expected = np.zeros(l.inputs, np.float32)
    # backward_reorg_layer: reorg_cpu(l.delta, l.w, l.h, l.c, batch, stride, !reverse, net.delta)
    reorg_cpu(l.delta.reshape(-1), w, h, c, 1, stride, not reverse, expected)
    target = np.ones((1, l.inputs), np.float32)
    net.input, net.delta = net.input_buffer, target
    l.backward(l, net)
    np.testing.assert_array_equal(target[0], 1 + expected)


@pytest.mark.parametrize(
    "options, h, w, c",
    [
        ("stride=2", 5, 6, 8),
        ("stride=2", 4, 6, 6),
        ("stride=2\nreverse=1", 3, 3, 6),
        ("stride=0", 4, 4, 4),
    ],
)
def test_sizes_that_cannot_be_shuffled_are_config_errors(tmp_path, options, h, w, c):
    with pytest.raises(ConfigError) as error:
        build(tmp_path, cfg(options, h, w, c))
    assert error.value.key == "stride"


def test_needs_an_image(tmp_path):
    with pytest.raises(ConfigError, match="image"):
        build(tmp_path, "[net]\ninputs=8\n[reorg]\nstride=2\n")
