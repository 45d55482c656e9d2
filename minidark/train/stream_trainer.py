"""Training from an image list streamed by worker pools (data/stream.py).

:class:`StreamingTrainer` is the classifier :class:`Trainer` with another
batch source: the indices come from the same seeded, resumable permutation
(``next_indices``), and then one 63-bit seed per image is drawn from the
trainer's generator; workers decode and augment each image from its path
and seed (darknet's load_data_augment at the image's own size). While the
network trains on batch k, batch k+1 is already being prepared: its indices
and seeds are computed on a *copy* of the generator and order, and used
only if the real draws, made when batch k+1 is asked for, agree -- so the
checkpointed state (generator, order, position) is exactly that of a run
without prefetch, and a resume gives the same bytes. Memory: the path list
(data/stream.py) plus ``prefetch`` batches, whatever the dataset's size.

Validation streams the valid list the same way with darknet's
``validate_classifier_single`` preprocessing (resize_min, centre crop), at
the cfg's input size.

Multi-scale (``[net] random=1``, darknet's train_classifier): every 40
iterations the network is resized (``net.resize``) to a square side
``(k + 4) * 32``, k uniform in 0..10 (128 to 448), and the images are
augmented at that size, the crop range scaled with it. darknet draws k from
rand() when its process starts and every 40 batches after; here k comes
from the iteration count alone (a fixed generator per 40-iteration period),
so a resumed run has the sizes of an uninterrupted one.
"""

import numpy as np

from ..data.stream import ImageList, Preprocess, StreamingLoader, train_preprocess
from ..kernels.tree import fill_hierarchy
from .trainer import Trainer, evaluate, topk_indices

SEED_LIMIT = 2**63
RESIZE_EVERY = 40  # darknet's train_classifier: count++ % 40
MULTISCALE_SEED = 0x6D6973  # the generator of the sizes, per 40-iteration period


class StreamingTrainer(Trainer):
    """``train_set`` and ``valid_set`` are :class:`ImageList`; ``labels`` the class names."""

    def __init__(
        self,
        net,
        train_set,
        valid_set=None,
        *,
        labels,
        workers=4,
        kind="thread",
        labels_file=None,
        **kwargs,
    ):
        self.labels, self.labels_file = list(labels), labels_file
        self.workers, self.kind = workers, kind
        super().__init__(net, train_set, valid_set, **kwargs)

    # ---------------------------------------------------------- batch source
    def setup_data(self):
        net = self.net
        if len(self.labels) != net.truths:
            from ..errors import DataError

            raise DataError(
                f"{self.train_set.path}: {len(self.labels)} labels but the network has "
                f"{net.truths} outputs"
            )
        self.augment = None  # the stream augments each image at its own size
        shape = (net.c, net.h, net.w)
        self.loader = StreamingLoader(
            self.train_set,
            train_preprocess(net, self.labels, self.train_set.path, self.labels_file),
            self.workers,
            self.kind,
            prefetch=2,
        )
        self._x = np.empty((self.rows, int(np.prod(shape))), np.float32)
        self._truth = np.zeros((self.rows, net.truths), np.float32)
        self._arange = np.arange(self.rows)
        self._pending = None
        self._batch_labels = np.zeros(self.rows, np.int64)
        self.base_size = (net.w, net.h)

    def size_at(self, iteration):
        """(w, h) of the network at iteration ``iteration`` (0-based)."""
        if not self.net.config.random:
            return self.base_size
        generator = np.random.default_rng([MULTISCALE_SEED, iteration // RESIZE_EVERY])
        side = int(generator.integers(0, 11) + 4) * 32
        return side, side

    def _resize(self, size):
        from ..errors import ConfigError

        net = self.net
        try:
            net.resize(*size)
        except ValueError as exc:
            raise ConfigError(
                f"random=1 resizes the network every {RESIZE_EVERY} iterations, but {exc}",
                file=net.cfg_file,
                section="net",
                key="random",
            ) from None
        self._x = np.empty((self.rows, net.inputs), np.float32)

    @property
    def wait_seconds(self):
        """Seconds the loop spent waiting for the loader."""
        return self.loader.wait_seconds

    def load_batch(self, indices):
        net = self.net
        size = self.size_at(net.current_batch)
        if size != (net.w, net.h):
            self._resize(size)
        indices = np.array(indices, np.int64)
        seeds = self.rng.integers(0, SEED_LIMIT, self.rows, dtype=np.uint64)
        pending, self._pending = self._pending, None
        if pending is not None and not (
            np.array_equal(pending[0], indices)
            and np.array_equal(pending[1], seeds)
            and pending[3] == size
        ):
            self.loader.cancel(pending)  # the state changed (a restore): prepare afresh
            pending = None
        if pending is None:
            pending = self.loader.submit(indices, seeds, size)
        labels = self.loader.collect(pending, self._x)
        self._pending = self.loader.submit(*self._look_ahead(), self.size_at(net.current_batch + 1))
        self._truth.fill(0)
        self._truth[self._arange, labels] = 1
        if self.hierarchy is not None:
            self._truth[...] = fill_hierarchy(self._truth, self.hierarchy)
        self._batch_labels[:] = labels
        return self._x, self._truth

    def _look_ahead(self):
        """The next batch's indices and seeds, drawn on copies of the order and generator."""
        rng = np.random.default_rng()
        rng.bit_generator.state = self.rng.bit_generator.state
        order, position = self.order, self.position
        out, filled = np.empty(self.rows, np.int64), 0
        while filled < self.rows:  # next_indices, on copies
            if position >= self.n:
                order, position = rng.permutation(self.n), 0
            take = min(self.rows - filled, self.n - position)
            out[filled : filled + take] = order[position : position + take]
            position += take
            filled += take
        return out, rng.integers(0, SEED_LIMIT, self.rows, dtype=np.uint64)

    def truth_problem(self):
        return None  # every streamed image's class comes from its path, checked on load

    def run(self):
        try:
            return super().run()
        finally:
            if self._pending is not None:
                self.loader.cancel(self._pending)
                self._pending = None

    def close(self):
        self.loader.close()

    # ------------------------------------------------------------ evaluation
    def evaluate_valid(self):
        size = (self.net.w, self.net.h)
        if size != self.base_size:  # evaluate at the cfg's size, then train on
            self._resize(self.base_size)
        try:
            if not isinstance(self.valid_set, ImageList):  # an in-memory set (IDX)
                return evaluate(self.net, self.valid_set, self.top)
            return evaluate_stream(
                self.net, self.valid_set, self.labels, self.top, self.workers, self.kind
            )
        finally:
            if size != self.base_size:
                self._resize(size)


def evaluate_stream(
    net, images, labels, top=1, workers=4, kind="thread", mode="valid", confusion=False
):
    """Top-1/top-k of ``net`` on an :class:`ImageList` with darknet's valid
    preprocessing, ``net.batch`` images at a time, the next chunk decoded
    while this one is predicted; the result is :func:`trainer.evaluate`'s."""
    shape = (net.c, net.h, net.w)
    k = max(1, int(top))
    chunk = max(net.batch, 64)
    n = len(images)
    hits1 = hitsk = 0
    matrix = np.zeros((net.outputs, net.outputs), np.int64)
    buffer = np.empty((chunk, int(np.prod(shape))), np.float32)
    chunks = [np.arange(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    with StreamingLoader(images, Preprocess(mode, shape, labels), workers, kind) as loader:
        pending = loader.submit(chunks[0], np.zeros(chunks[0].size, np.uint64))
        for i in range(len(chunks)):
            truth = loader.collect(pending, buffer)
            if i + 1 < len(chunks):  # decode the next chunk while this one is predicted
                pending = loader.submit(chunks[i + 1], np.zeros(chunks[i + 1].size, np.uint64))
            best = topk_indices(net.predict(buffer[: truth.size]), k)
            hits1 += int((best[:, 0] == truth).sum())
            hitsk += int((best == truth[:, None]).any(axis=1).sum())
            np.add.at(matrix, (truth, best[:, 0]), 1)
    result = {"n": n, "top1": hits1 / n, "topk": hitsk / n, "k": k}
    if confusion:
        result["confusion"] = matrix
    return result


MULTI_SCALES = (7, 9, 10, 11, 12)  # darknet's 224, 288, 320, 352, 384, in sevenths of 224


def multi_scores(net, im, width):
    """The outputs for ``im`` summed over darknet's scales (of ``width``) and mirrors;
    ``net`` is left resized to the last scale."""
    from ..data.preprocess import resize_max

    total = np.zeros(net.outputs, np.float64)
    for scale in MULTI_SCALES:
        r = resize_max(im, width * scale // 7)
        net.resize(r.shape[2], r.shape[1])
        total += net.predict(np.stack([r.ravel(), r[:, :, ::-1].ravel()])).sum(axis=0)
    return total


def evaluate_multi(net, images, labels, top=1, confusion=False):
    """darknet's validate_classifier_multi on an :class:`ImageList`: per image,
    at each scale the long side resized to ``net.w * s / 7``, the network
    resized to the image, the outputs of the image and its mirror summed over
    scales; top-k of the sum. The network is left at its original size."""
    from ..data.image import load_image

    base = (net.w, net.h)
    k = max(1, int(top))
    hits1 = hitsk = 0
    matrix = np.zeros((net.outputs, net.outputs), np.int64)
    classes = Preprocess("stretch", (net.c, net.h, net.w), labels)
    try:
        for i in range(len(images)):
            truth = classes.label(images[i], images, i)
            total = multi_scores(net, load_image(images.file(i), net.c), base[0])
            best = topk_indices(total[None], k)[0]
            hits1 += int(best[0] == truth)
            hitsk += int(truth in best)
            matrix[truth, best[0]] += 1
    finally:
        net.resize(*base)
    n = len(images)
    result = {"n": n, "top1": hits1 / n, "topk": hitsk / n, "k": k}
    if confusion:
        result["confusion"] = matrix
    return result
