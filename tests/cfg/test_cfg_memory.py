"""Size and memory guards: a network whose buffers would not fit is refused
before anything is allocated, quickly, with one line naming the layer, the
size and the key; the convolution workspace stays bounded for huge images."""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minidark
from minidark.cfg import parse_network, read_cfg_text
from minidark.cfg.builder import MEMORY_ENV, available_memory, parse_size
from minidark.errors import ConfigError
from minidark.kernels import conv

GIB = 1 << 30
IMAGE = "[net]\nbatch=2\nheight=8\nwidth=8\nchannels=3\n"


def build(text, **kwargs):
    kwargs.setdefault("verbose", False)
    return parse_network(read_cfg_text(text, file="x.cfg"), file="x.cfg", **kwargs)


@pytest.mark.parametrize(
    "text, section, key",
    [
        ("[net]\nbatch=1\nheight=40000\nwidth=40000\nchannels=1\n[softmax]\n", "net", "width"),
        ("[net]\nbatch=1\nheight=100000\nwidth=100000\nchannels=3\n[softmax]\n", "net", "width"),
        ("[net]\nbatch=2000000000\ninputs=4\n[softmax]\n", "net", "batch"),
        (IMAGE + "[convolutional]\nfilters=10000000\nsize=3\n", "convolutional", "filters"),
        (
            IMAGE + "[convolutional]\nfilters=4\nsize=3\npadding=1000000\n",
            "convolutional",
            "padding",
        ),
        ("[net]\ninputs=784\n[connected]\noutput=1000000000\n", "connected", "output"),
        (IMAGE + "[upsample]\nstride=100000\n", "upsample", "stride"),
        (IMAGE + "[reorg]\nextra=2000000000\n", "reorg", "extra"),
        (IMAGE + "[convolutional]\nsize=12345678901234567890\n", "convolutional", "size"),
        (IMAGE + "[local]\nfilters=100000\nsize=3\n", "local", "filters"),
        (IMAGE + "[deconvolutional]\nfilters=10000000\nsize=3\n", "deconvolutional", "filters"),
        (
            IMAGE + "[deconvolutional]\nfilters=4\nsize=3\nstride=100000\n",
            "deconvolutional",
            "stride",
        ),
        (
            IMAGE
            + "[maxpool]\nsize=2\nstride=1\n"
            + "[route]\nlayers=-1,-1,-1,-1,-1,-1,-1,-1\n" * 12,
            "route",
            None,
        ),
    ],
)
def test_too_large_is_refused_quickly_with_one_line(text, section, key):
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        build(text, max_memory=GIB)
    assert time.perf_counter() - start < 2.0
    error, message = info.value, str(info.value)
    assert "\n" not in message and message.startswith("x.cfg:")
    assert (error.section, error.key) == (section, key), message
    assert "GiB" in message or "int range" in message or "too large" in message, message


def test_the_default_limit_is_the_available_memory():
    if available_memory() is None:
        pytest.skip("no /proc/meminfo MemAvailable on this system")
    with pytest.raises(ConfigError, match="available memory") as info:
        build("[net]\ninputs=784\n[connected]\noutput=1000000000\n")
    assert info.value.key == "output"


def test_max_memory_counts_the_layers_before(tmp_path):
    text = IMAGE + "[convolutional]\nfilters=16\nsize=3\npad=1\n" * 4
    net = build(text, max_memory=64 << 20)
    held = sum(l.output.nbytes + l.delta.nbytes for l in net.layers)
    with pytest.raises(ConfigError, match="network before it holds") as info:
        build(text, max_memory=held // 2)
    assert info.value.section == "convolutional"


def test_limit_from_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "net.cfg"
    path.write_text("[net]\ninputs=1000\n[connected]\noutput=1000\n")
    monkeypatch.setenv(MEMORY_ENV, "1M")
    with pytest.raises(ConfigError, match=r"\$MINIDARK_MAX_MEMORY"):
        minidark.load_network(str(path))
    assert minidark.load_network(str(path), max_memory=64 << 20).layers[0].outputs == 1000
    monkeypatch.setenv(MEMORY_ENV, "lots")
    with pytest.raises(ConfigError, match="is not a size"):
        minidark.load_network(str(path))


def test_parse_size():
    assert parse_size("123") == 123 and parse_size("2K") == 2048
    assert parse_size("1.5G") == 3 << 29 and parse_size("8GiB") == 8 << 30
    assert parse_size("4 mb") == 4 << 20
    assert parse_size("-1") is None and parse_size("1X") is None


def test_cfg_summary_says_one_line(tmp_path, capsys):
    from minidark.cli import main

    path = tmp_path / "big.cfg"
    path.write_text("[net]\ninputs=784\n[connected]\noutput=1000000000\n")
    status = main(["cfg", "summary", str(path)])
    err = capsys.readouterr().err.strip()
    assert status != 0 and "\n" not in err and "[connected]" in err and "'output'" in err


# --------------------------------------------------------------------------
# The convolution workspace: bands of rows for huge images
# --------------------------------------------------------------------------
CONVS = (
    "[net]\nbatch=3\nheight=11\nwidth=9\nchannels=4\n"
    "[convolutional]\nfilters=6\nsize=3\nstride={stride}\npad=1\ngroups={groups}\n"
    "activation=leaky\nbatch_normalize={bn}\n"
    "[convolutional]\nfilters=4\nsize={size}\nstride=1\npad=1\nactivation=linear\n"
)


def run_once(text, seed=1):
    net = build(text, seed=seed)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((net.batch, net.inputs)).astype(np.float32)
    out = net.forward(x, train=True).copy()
    net.layers[-1].delta[:] = rng.standard_normal(net.layers[-1].delta.shape)
    net.backward()
    return net, out


@pytest.mark.parametrize("cap", [1, 600])  # bytes: bands of one row, or of a few
@pytest.mark.parametrize(
    "stride, groups, bn, size",
    [(1, 1, 0, 3), (2, 1, 0, 3), (1, 2, 0, 3), (2, 2, 1, 3), (1, 1, 1, 5), (3, 1, 0, 1)],
)
def test_bands_match_whole_images(monkeypatch, stride, groups, bn, size, cap):
    text = CONVS.format(stride=stride, groups=groups, bn=bn, size=size)
    whole, expected = run_once(text)
    assert not any(l.band for l in whole.layers)
    monkeypatch.setattr(conv, "COLUMN_BYTES", cap)
    banded, out = run_once(text)
    assert all(0 < l.band < l.out_h for l in banded.layers if not l.direct)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(banded.layers, whole.layers, strict=True):
        np.testing.assert_allclose(a.weight_updates, b.weight_updates, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(a.bias_updates, b.bias_updates, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(a.delta, b.delta, rtol=1e-5, atol=1e-5)  # input gradient


def test_huge_image_workspace_is_bounded(monkeypatch):
    # 2048x2048x3 through a 3x3x16 conv: 1.8 GB of columns per image without bands
    text = (
        "[net]\nbatch=1\nheight=2048\nwidth=2048\nchannels=3\n"
        "[convolutional]\nfilters=16\nsize=3\npad=1\n[convolutional]\nfilters=16\nsize=3\n"
        "pad=1\n"
    )
    net = build(text)
    padded = 2050 * 2050 * 16 * 4
    assert net.workspace.nbytes <= 2 * padded + 3 * conv.COLUMN_BYTES
    assert all(l.band for l in net.layers)


SIZES = st.one_of(st.integers(-3, 40), st.integers(0, 2**40), st.sampled_from([2**31 - 1, 2**31]))


@pytest.mark.filterwarnings("ignore::minidark.cfg.ConfigWarning")  # e.g. filters in [maxpool]
@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(["filters", "size", "stride", "padding", "groups"]),
    st.sampled_from(
        [
            "[net]",
            "[convolutional]",
            "[maxpool]",
            "[upsample]",
            "[connected]",
            "[reorg]",
            "[local]",
            "[deconvolutional]",
        ]
    ),
    SIZES,
    SIZES,
)
def test_any_size_is_a_network_or_a_quick_clear_error(key, section, width, value):
    """Sizes from -3 to 2^40 in the input and in a layer: a Network within the
    limit, or a one-line ConfigError, each in well under a second or two."""
    keys = {"[net]": "", "[connected]": "output", "[reorg]": "extra", "[upsample]": "stride"}
    key = keys.get(section, key) or key
    layer = section if section != "[net]" else "[convolutional]"
    text = (
        f"[net]\nbatch=2\nheight=6\nwidth={width}\nchannels=2\n{layer}\n"
        + (f"{key}={value}\n" if section != "[net]" else "")
        + "[avgpool]\n"
    )
    start = time.perf_counter()
    try:
        net = build(text, max_memory=256 << 20)
    except ConfigError as error:
        assert "\n" not in str(error) and str(error).startswith("x.cfg:")
    else:
        assert sum(l.output.nbytes for l in net.layers) <= 256 << 20
    assert time.perf_counter() - start < 3
