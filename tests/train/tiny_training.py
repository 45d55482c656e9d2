"""A tiny network on a synthetic data set, for trainer tests that train many times.

10 random 4x4 grey images in 3 classes, 4 images per iteration (2 mini-batches
of 2): an epoch ends every 2.5 iterations, mid-iteration. The cfg carries
state across iterations in every way the trainer must restore: momentum, a
steps policy, dropout (the network's generator), augmentation and epoch
permutations (the trainer's generator). A run of 8 iterations takes a few
milliseconds plus its fsyncs.
"""

import io
import os

import numpy as np

import minidark
from minidark.data.dataset import Dataset
from minidark.train.trainer import Trainer

CFG = """[net]
batch={batch}
subdivisions={subdivisions}
height=4
width=4
channels=1
learning_rate=0.1
momentum=0.9
decay=0.0005
policy=steps
steps=3,6
scales=.5,.5
max_batches={max_batches}
backup_every={backup_every}
flip=1
exposure=1.2

[connected]
output=8
activation=leaky

[dropout]
probability=.25

[connected]
output=3
activation=linear

[softmax]
"""


def tiny_data(n=10, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8)
    return Dataset(images, np.arange(n) % classes, f"tiny-{n}")


def write_tiny_cfg(
    folder, max_batches=8, backup_every=2, name="tiny.cfg", batch=4, subdivisions=2, **keys
):
    """The tiny cfg (``keys`` added to [net]); its path."""
    path = os.path.join(folder, name)
    text = CFG.format(
        max_batches=max_batches, backup_every=backup_every, batch=batch, subdivisions=subdivisions
    )
    text = text.replace(
        "\n\n[connected]", "".join(f"\n{k}={v}" for k, v in keys.items()) + "\n\n[connected]", 1
    )
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path


def tiny_trainer(
    cfg, backup_dir, weights=None, seed=5, data=None, restore=True, exact=True, out=None, valid=None
):
    """A Trainer for the tiny cfg (restored from ``weights`` when given)."""
    net = minidark.load_network(cfg, weights, seed=seed)
    trainer = Trainer(
        net,
        data if data is not None else tiny_data(),
        valid,
        backup_dir=backup_dir,
        base="tiny",
        seed=seed,
        progress=False,
        out=out if out is not None else io.StringIO(),
        start=weights,
    )
    if weights is not None and restore:
        trainer.restore(weights, exact=exact)
    return trainer


def write_tiny_data_file(folder, n=10, classes=3, seed=0, backup="backup"):
    """The tiny data set as IDX files plus a .data file naming them; its path."""
    data = tiny_data(n, classes, seed)
    images = os.path.join(folder, "tiny-images-idx3-ubyte")
    with open(images, "wb") as handle:
        handle.write(bytes([0, 0, 8, 3]) + b"".join(v.to_bytes(4, "big") for v in (n, 4, 4)))
        handle.write(data.images.tobytes())
    with open(os.path.join(folder, "tiny-labels-idx1-ubyte"), "wb") as handle:
        handle.write(bytes([0, 0, 8, 1]) + n.to_bytes(4, "big"))
        handle.write(data.labels.astype(np.uint8).tobytes())
    path = os.path.join(folder, "tiny.data")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"classes={classes}\ntrain={images}\nbackup={os.path.join(folder, backup)}\n")
    return path
