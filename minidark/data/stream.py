"""The streaming loader: image-list batches decoded by a pool of workers.

An :class:`ImageList` holds the paths of a list file as one bytes blob and
two int64 offset arrays (about 16 bytes + the path per image: a million
paths cost tens of MB, not the ~100 bytes per entry of Python strings); no
image is decoded until a batch asks for it. A :class:`StreamingLoader`
decodes and preprocesses a batch's images on a pool of workers -- threads
(Pillow's decoder and numpy release the GIL) or processes -- and returns
futures, so the caller can submit the next batch before training on this
one; at most ``prefetch`` batches are in flight (bounded memory).

Every image is preprocessed from its own seed (``np.random.default_rng
(seed)``), so a batch's pixels depend only on (indices, seeds), never on
which worker ran first: the order and the seeds come from the trainer's
random generator (train/stream_trainer.py), so a resumed run is
byte-identical to an uninterrupted one.

Modes: ``"train"`` darknet's load_data_augment (data/preprocess.py),
``"valid"`` resize_min + centre crop, ``"predict"`` letterbox, ``"stretch"``
a plain resize to the network size. The class of an image is darknet's rule
(dataset.label_from_path), taken when the image is loaded.
"""

import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np

from ..errors import DataError, printable
from ..files import LIST_LIMIT, open_regular
from .dataset import label_error, label_from_path
from .image import load_image, resize_image
from .preprocess import TrainAugment, predict_image, valid_image

IS_SPACE = np.zeros(256, bool)  # byte -> is it whitespace (what str.strip removes in ASCII)
IS_SPACE[list(b" \t\r\n\v\f")] = True
CHUNK = 1 << 22  # bytes of the list scanned at once


class ImageList:
    """The non-blank lines of an image list, stripped, held compactly."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.folder = os.path.dirname(os.path.abspath(self.path))
        handle, _ = open_regular(self.path, "image list", LIST_LIMIT, DataError)
        with handle:
            self.blob = np.frombuffer(handle.read(), np.uint8)
        # newlines found chunk by chunk: no blob-sized temporary
        breaks = [
            np.flatnonzero(self.blob[at : at + CHUNK] == 10) + at
            for at in range(0, self.blob.size, CHUNK)
        ]
        ends = np.concatenate([*breaks, [self.blob.size]]).astype(np.int64)
        starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
        starts, ends = self._strip(self.blob, starts, ends)
        keep = ends > starts
        if keep.all():
            self.starts, self.ends, self._lines = starts, ends, None
        else:
            self.starts, self.ends = starts[keep], ends[keep]
            self._lines = np.flatnonzero(keep)  # entry -> line index, only when blanks exist
        if not len(self.starts):
            raise DataError(f"{printable(self.path)}: image list is empty")

    @staticmethod
    def _strip(blob, starts, ends):
        """Drop surrounding whitespace, vectorised over lines: one round per
        character of the longest run."""
        if not blob.size:
            return starts, ends
        last = blob.size - 1
        while True:
            lead = (starts < ends) & IS_SPACE[blob[np.minimum(starts, last)]]
            starts[lead] += 1
            trail = (ends > starts) & IS_SPACE[blob[np.clip(ends - 1, 0, last)]]
            ends[trail] -= 1
            if not (lead.any() or trail.any()):
                return starts, ends

    def __len__(self):
        return self.starts.size

    def __getitem__(self, i):
        raw = self.blob[self.starts[i] : self.ends[i]].tobytes()
        return raw.decode("utf-8", "surrogateescape")

    def line_number(self, i):
        """The 1-based line of entry ``i`` in the file."""
        return int(self._lines[i] + 1) if self._lines is not None else int(i + 1)

    def file(self, i):
        """Entry ``i`` as a file path: as written if it exists (darknet: relative
        to the current directory), else relative to the list's folder."""
        entry = self[i]
        if os.path.isabs(entry) or os.path.exists(entry):
            return entry
        return os.path.join(self.folder, entry)

    @property
    def source(self):
        return self.path

    @property
    def nbytes(self):
        return self.blob.nbytes + self.starts.nbytes + self.ends.nbytes


class Preprocess:
    """What a worker needs to turn (path, seed) into ``((c, h, w) float32, class)``."""

    def __init__(self, mode, shape, labels, augment=None, source="", labels_file=None):
        if mode not in ("train", "valid", "predict", "stretch"):
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        if mode == "train" and augment is None:
            raise ValueError("train preprocessing needs a TrainAugment")
        self.mode, self.shape, self.labels = mode, tuple(shape), labels
        self.augment, self.source, self.labels_file = augment, source, labels_file

    def label(self, entry, images, index):
        """The class of ``entry`` (entry ``index`` of ``images``), errors naming the line."""
        try:
            return label_from_path(entry, self.labels)
        except ValueError as exc:
            where = f"{printable(images.path)}:{images.line_number(index)}"
            raise label_error(where, entry, self.labels, exc.args[0], self.labels_file) from None

    def __call__(self, entry, file, where, seed, size=None):
        """``size``: (w, h) to produce instead of the shape's (multi-scale training)."""
        c, h, w = self.shape
        if size is not None:
            w, h = size
        try:
            label = label_from_path(entry, self.labels) if self.labels else -1
        except ValueError as exc:
            raise label_error(where, entry, self.labels, exc.args[0], self.labels_file) from None
        try:
            im = load_image(file, c)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        if self.mode == "train":
            im = self.augment(im, np.random.default_rng(seed), (w, h))
        elif self.mode == "valid":
            im = valid_image(im, w, h)
        elif self.mode == "predict":
            im = predict_image(im, w, h)
        elif im.shape[1:] != (h, w):
            im = resize_image(im, w, h)
        return np.ascontiguousarray(im, np.float32), label


_PROCESS_PREPROCESS = None  # a worker process's Preprocess, set by its initializer


def _set_process_preprocess(preprocess):
    global _PROCESS_PREPROCESS
    _PROCESS_PREPROCESS = preprocess


def _process_task(entry, file, where, seed, size):
    return _PROCESS_PREPROCESS(entry, file, where, seed, size)


class StreamingLoader:
    """Batches of an :class:`ImageList`, preprocessed on ``workers`` threads or processes.

    ``submit(indices, seeds)`` starts a batch and returns a handle;
    ``collect(handle, out)`` waits for it, writes the images into ``out``
    (rows, c*h*w) and returns the classes. ``wait_seconds`` adds up the time
    ``collect`` spent waiting.
    """

    def __init__(self, images, preprocess, workers=4, kind="thread", prefetch=2):
        if kind not in ("thread", "process"):
            raise ValueError(f"kind must be 'thread' or 'process', got {kind!r}")
        if workers < 1 or prefetch < 1:
            raise ValueError(f"workers and prefetch must be >= 1, got {workers}, {prefetch}")
        self.images, self.preprocess = images, preprocess
        self.workers, self.kind, self.prefetch = workers, kind, prefetch
        self.wait_seconds = 0.0
        self.in_flight = []
        if kind == "thread":
            self.pool = ThreadPoolExecutor(workers, thread_name_prefix="minidark-loader")
            self._task = preprocess
        else:
            import multiprocessing

            self.pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_set_process_preprocess,
                initargs=(preprocess,),
            )
            self._task = _process_task

    def submit(self, indices, seeds, size=None):
        """Start preprocessing the images ``indices`` with per-image ``seeds``
        (at ``size`` = (w, h) instead of the preprocessing's shape)."""
        if len(self.in_flight) >= self.prefetch:  # bounded memory: the caller's contract
            raise RuntimeError(
                f"{self.prefetch} batches already in flight: collect or cancel one first"
            )
        images = self.images
        futures = []
        for index, seed in zip(
            np.asarray(indices).tolist(), np.asarray(seeds).tolist(), strict=True
        ):
            where = f"{printable(images.path)}:{images.line_number(index)}"
            futures.append(
                self.pool.submit(self._task, images[index], images.file(index), where, seed, size)
            )
        handle = (np.array(indices, np.int64), np.array(seeds, np.uint64), futures, size)
        self.in_flight.append(handle)
        return handle

    def collect(self, handle, out):
        """Wait for ``handle``'s images, write them into ``out``; return the classes."""
        import time

        if handle in self.in_flight:
            self.in_flight.remove(handle)
        futures = handle[2]
        labels = np.empty(len(futures), np.int64)
        tick = time.perf_counter()
        for row, future in enumerate(futures):
            image, labels[row] = future.result()
            out[row] = image.reshape(-1)
        self.wait_seconds += time.perf_counter() - tick
        return labels

    def _drain(self, handle):
        for future in handle[2]:
            if not future.cancel():
                future.exception()  # let it finish; its error is not this caller's

    def cancel(self, handle):
        """Drop a batch that will not be used."""
        if handle in self.in_flight:
            self.in_flight.remove(handle)
        self._drain(handle)

    def close(self):
        for handle in self.in_flight:
            self._drain(handle)
        self.in_flight = []
        self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def train_preprocess(net, labels, source="", labels_file=None):
    """darknet's training preprocessing for ``net``'s input size."""
    return Preprocess(
        "train", (net.c, net.h, net.w), labels, TrainAugment(net), source, labels_file
    )
