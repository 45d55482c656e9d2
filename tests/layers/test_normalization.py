"""[normalization] / [lrn]: local response normalization (normalization_layer.c)."""

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


def cfg(size=5, alpha=0.0001, beta=0.75, kappa=1.0, h=3, w=5, c=7, batch=2, name="lrn"):
    return (
        f"[net]\nbatch={batch}\nheight={h}\nwidth={w}\nchannels={c}\n\n"
        f"[{name}]\nsize={size}\nalpha={alpha}\nbeta={beta}\nkappa={kappa}\n"
    )


def darknet_norms(x, size, alpha, kappa):
    """darknet's running-sum loop (forward_normalization_layer), in float64."""
    batch, c, _ = x.shape
    squared = x.astype(np.float64) ** 2
    norms = np.empty_like(squared)
    for b in range(batch):
        norms[b, 0] = kappa
        for k in range(size // 2):
            if k < c:  # darknet reads past the channels here
                norms[b, 0] += alpha * squared[b, k]
        for k in range(1, c):
            norms[b, k] = norms[b, k - 1]
            prev, nxt = k - (size - 1) // 2 - 1, k + size // 2
            if prev >= 0:
                norms[b, k] -= alpha * squared[b, prev]
            if nxt < c:
                norms[b, k] += alpha * squared[b, nxt]
    return norms


@pytest.mark.parametrize("name", ["lrn", "normalization"])
def test_both_section_names_and_darknet_defaults(tmp_path, name):
    l = build(tmp_path, f"[net]\nheight=3\nwidth=2\nchannels=4\n[{name}]\n").layers[0]
    assert l.type == "normalization"
    assert (l.alpha, l.beta, l.kappa, l.size) == (0.0001, 0.75, 1.0, 5)
    assert (l.out_w, l.out_h, l.out_c, l.outputs) == (2, 3, 4, 24)


@pytest.mark.parametrize("size, c", [(5, 7), (5, 12), (3, 7), (4, 9), (1, 4), (5, 2), (7, 3)])
def test_forward_matches_darknets_running_sum(tmp_path, size, c):
    alpha, beta, kappa = 0.05, 0.75, 2.0
    net = build(tmp_path, cfg(size, alpha, beta, kappa, c=c))
    x = np.random.default_rng(size * c).normal(size=(2, c, 15)).astype(np.float32)
    norms = darknet_norms(x, size, alpha, kappa)
    out = net.forward(x.reshape(2, -1)).reshape(2, c, 15)
    np.testing.assert_allclose(net.layers[0].norms.reshape(2, c, 15), norms, rtol=1e-5)
    np.testing.assert_allclose(out, x * norms**-beta, rtol=1e-5)


def test_darknets_window_misses_channel_size_over_2(tmp_path):
    # the textbook window [k-2, k+2]; darknet never adds channel 2 and
    # subtracts it once the window has passed (channels >= size)
    net = build(tmp_path, cfg(5, alpha=1.0, beta=1.0, kappa=0.0, c=8, h=1, w=1, batch=1))
    x = np.arange(1, 9, dtype=np.float32)
    net.forward(x[None])
    sq = x.astype(np.float64) ** 2
    textbook = np.array([sq[max(k - 2, 0) : k + 3].sum() for k in range(8)])
    np.testing.assert_allclose(net.layers[0].norms[0], textbook - sq[2], rtol=1e-6)


@pytest.mark.parametrize(
    "size, c, beta",
    [(5, 7, 0.75), (5, 12, 0.75), (4, 9, 0.5), (3, 4, 1.5), (5, 2, 0.75), (7, 3, 0.75)],
)
def test_exact_gradient(tmp_path, size, c, beta):
    # large alpha so the normalisation term matters (darknet's approximation fails here)
    net = build(tmp_path, cfg(size, alpha=0.3, beta=beta, kappa=2.0, c=c))
    results = gradcheck(net)
    assert all(r.passed for r in results), format_results(results)


def test_darknets_approximate_backward_would_fail_the_check(tmp_path):
    net = build(tmp_path, cfg(5, alpha=0.3, kappa=2.0, c=7))
    from minidark.layers import normalization

    def approximate(l, n):  # darknet: net.delta = delta * norm^-beta
        n.delta.reshape(l.delta.shape)[...] = l.delta * np.power(l.norms, -l.beta)

    net.layers[0].backward = approximate
    results = gradcheck(net)
    assert not all(r.passed for r in results)
    assert normalization.backward_normalization is not approximate


def test_backward_accumulates(tmp_path):
    net = build(tmp_path, cfg(5, alpha=0.3, kappa=2.0, c=6, batch=1))
    l = net.layers[0]
    x = np.random.default_rng(0).normal(size=(1, net.inputs)).astype(np.float32)
    net.forward(x)
    l.delta[...] = np.random.default_rng(1).normal(size=l.delta.shape)
    once = np.zeros_like(x)
    net.input, net.delta = x, once
    l.backward(l, net)
    twice = np.full_like(x, 3.0)
    net.delta = twice
    l.backward(l, net)
    np.testing.assert_allclose(twice, once + 3.0, rtol=1e-6)


def test_flat_input_normalises_across_all_values(tmp_path):
    l = build(tmp_path, "[net]\ninputs=6\n[lrn]\nsize=3\n").layers[0]
    assert (l.w, l.h, l.c, l.outputs) == (1, 1, 6, 6)


def test_bad_size_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as error:
        build(tmp_path, cfg(size=0))
    assert error.value.key == "size"
