"""minidark bench --rnn: the batches both engines read are rnn train's streams, the
validation rows are every next byte once, the cfg check refuses what torch.nn.LSTM
cannot mirror, and (with PyTorch installed) the twin trains to the same numbers."""

import os
from types import SimpleNamespace

import numpy as np
import pytest

from minidark import load_network
from minidark.data.text import TextStreams
from minidark.errors import MinidarkError
from minidark.tools.bench.recurrent import (
    ORDER_STREAM,
    check_rnn_net,
    training_batches,
    validation_batches,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = bytes(range(7, 250)) * 3 + b"def f(x):\n    return x\n" * 20
TINY_LSTM = """[net]
inputs=256
batch=3
time_steps=5
learning_rate=0.5
momentum=0.9
decay=0.001
policy=steps
steps=2
scales=.1
max_batches=4
[lstm]
output=8
[connected]
output=256
activation=linear
[softmax]
"""


def test_training_batches_are_rnn_trains_streams():
    inputs, truths, resets = training_batches(TEXT, 4, 6, 40, seed=3)
    rng = np.random.default_rng(np.random.SeedSequence([3, ORDER_STREAM]))
    streams = TextStreams(TEXT, 4, 6, rng)
    x = np.zeros((24, 256), np.float32)
    y = np.zeros((24, 256), np.float32)
    for n in range(40):
        streams.fill(x, y)
        assert np.array_equal(x.argmax(1).reshape(6, 4), inputs[n])
        assert np.array_equal(y.argmax(1).reshape(6, 4), truths[n])
        moved = streams.jump()
        assert np.array_equal(np.flatnonzero(resets[n]), moved)
    assert resets.any()  # 160 draws at 1/64: a jump is all but certain with this seed


def test_validation_batches_score_each_next_byte_once():
    text = bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8))
    inputs, truths = validation_batches(text, 4, 7)
    chunk = 1000 // 4
    assert inputs.shape == ((chunk - 1) // 7, 7, 4)
    for b in range(4):
        read = inputs[:, :, b].reshape(-1)
        expected = np.frombuffer(text[b * chunk : b * chunk + read.size + 1], np.uint8)
        assert np.array_equal(read, expected[:-1])
        assert np.array_equal(truths[:, :, b].reshape(-1), expected[1:])
    with pytest.raises(MinidarkError, match="too short"):
        validation_batches(b"abc", 4, 7)


@pytest.mark.parametrize("cfg", ["cfg/char_gru.cfg", "cfg/mnist_mlp.cfg"])
def test_only_an_lstm_character_network_is_compared(cfg):
    path = os.path.join(ROOT, cfg)
    with pytest.raises(MinidarkError, match="--rnn"):
        check_rnn_net(load_network(path, seed=0), path)


def test_the_torch_twin_trains_to_the_same_numbers(tmp_path):
    pytest.importorskip("torch")  # the bench extra
    from minidark.tools.bench.recurrent import worker_rnn

    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_LSTM)
    inputs, truths, resets = training_batches(TEXT, 3, 5, 4, seed=1)
    resets[1, 0] = True  # a zeroed stream, whatever the draw
    np.savez(tmp_path / "train.npz", inputs=inputs, truths=truths, resets=resets)
    valid_inputs, valid_truths = validation_batches(TEXT[::-1], 3, 5)
    np.savez(tmp_path / "valid.npz", inputs=valid_inputs, truths=valid_truths)
    runs = {
        engine: worker_rnn(SimpleNamespace(cfg=str(cfg), seed=0, data=str(tmp_path), engine=engine))
        for engine in ("minidark", "torch")
    }
    ours, theirs = runs["minidark"], runs["torch"]
    assert ours["initial_weights"] == theirs["initial_weights"]
    assert ours["rates"] == theirs["rates"] and ours["rates"][-1] < ours["rates"][0]
    np.testing.assert_allclose(ours["losses"], theirs["losses"], rtol=1e-4)
    assert abs(ours["valid_bits_per_char"] - theirs["valid_bits_per_char"]) < 1e-4
    assert ours["losses"][-1] < ours["losses"][0]
