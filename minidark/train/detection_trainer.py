"""The training loop of ``minidark detector train`` (darknet's train_detector).

The classifier's :class:`~minidark.train.trainer.Trainer` with another batch
source: images read per batch from a
:class:`~minidark.data.detection.DetectionDataset`, augmented as darknet's
``load_data_detection`` and packed as the last head's truth. Each iteration
takes one seed from the trainer's generator (saved in every checkpoint, so a
resumed run draws the same batches); image k of the update is augmented with
a generator seeded (seed, k), so whichever process loads it (one process, or
rank r of ``mpiexec -n N``: DistributedDetectionTrainer below) distorts it
alike. Everything else is the Trainer's: checkpoints with sidecars and
exact resume, log, NaN guard, Ctrl-C backup, metrics JSONL and chart.

Per iteration the log gets darknet's statistics line of every head (``Region
16 Avg IOU: ..., Class: ..., Obj: ..., No Obj: ..., .5R: ..., .75R: ...,
count: ...``, of the iteration's last mini-batch) before the iteration's line.

Evaluation (``valid_every`` and at the end) computes mAP@0.5 (VOC all-point,
or ``points``) and COCO mAP@[.5:.95] on the valid list (its first
``valid_limit`` images); the chart's accuracy curves are these two
(``top1`` = mAP@0.5, ``topk`` = mAP@[.5:.95] in the history the sidecar keeps).

Multi-scale (``random=1`` in the last head): before iterations 0, 10, 20, ...
(counted by ``net.current_batch``, so a resumed run resizes where the
uninterrupted one did) the network is resized to a square ``dim`` drawn
from the trainer's generator: darknet's ``(R(10) + 10) 32`` (320..608) for
a cfg of width >= 320; for a smaller cfg width ``s``, the multiples of 32
from ``s / 1.4`` to ``1.4 s`` (AB's random_coef; at least 32). In the last
200 iterations the size is the cfg's (darknet: 608). The size in force is
saved in the sidecar (``detector/width``, ``detector/height``).
"""

import math

import numpy as np

from ..data.detection import DetectionLoader
from .checkpoint import CheckpointError, checkpoint_base, read_sidecar, resolve_sidecar, size_limit
from .detection_eval import evaluate_detector, predict_dataset, score_detections
from .distributed import DistributedTrainer
from .trainer import Trainer

HEADS = ("yolo", "region", "detection")


def multiscale_sizes(size):
    """The square sizes multi-scale training draws from, for a cfg of width ``size``."""
    if size >= 320:
        return [(k + 10) * 32 for k in range(10)]
    low, high = max(32, -(-int(size / 1.4) // 32) * 32), max(32, int(size * 1.4) // 32 * 32)
    return list(range(low, high + 1, 32))


class DetectionTrainer(Trainer):
    """Trains a YOLO network on a DetectionDataset (see the module docstring)."""

    truth_checked = "the truth boxes are finite"

    def __init__(self, net, train_set, valid_set=None, *, points=0, valid_limit=None, **kwargs):
        self.points, self.valid_limit = points, valid_limit
        self.cfg_size = (net.w, net.h)
        self.first_row = 0  # row of the update's images this process's row 0 is
        super().__init__(net, train_set, valid_set, **kwargs)

    # --------------------------------------------------------------- data
    def setup_data(self):
        self.loader = DetectionLoader(self.train_set, self.net)
        self.augment = self.loader  # what the start line describes
        self.heads = [l for l in self.net.layers if l.type in HEADS]
        self.multiscale = bool(self.loader.head.random)
        self.sizes = multiscale_sizes(self.cfg_size[0])
        self.batch_stats = {}
        self._allocate()

    def _allocate(self):
        self._x = np.zeros((self.rows, self.net.inputs), np.float32)
        self._truth = np.zeros((self.rows, self.net.truths), np.float32)

    def load_batch(self, indices):
        """Images and truth of ``indices``; image k of the update is augmented
        with a generator of its own, seeded (shared draw, k): one draw of the
        trainer's generator per iteration, whoever loads which rows."""
        self._multiscale()
        shared = int(self.rng.integers(2**62))
        stats = {"objects": 0, "kept": 0}
        for row in range(len(indices)):
            part = self.loader.load(
                indices[row : row + 1],
                np.random.default_rng([shared, self.first_row + row]),
                self._x[row : row + 1],
                self._truth[row : row + 1],
            )
            for key in stats:
                stats[key] += part[key]
        self.batch_stats = stats
        return self._x, self._truth

    def _multiscale(self):
        net = self.net
        if not self.multiscale or net.current_batch % 10:
            return
        dim = self.sizes[int(self.rng.integers(len(self.sizes)))]
        if net.max_batches and net.current_batch + 200 > net.max_batches:
            dim = self.cfg_size[0]
        self.resize(
            dim,
            dim
            if self.cfg_size[0] == self.cfg_size[1]
            else round(dim * self.cfg_size[1] / self.cfg_size[0] / 32) * 32,
        )

    def resize(self, w, h):
        if (w, h) != (self.net.w, self.net.h):
            self.net.resize(w, h)
            self.heads = [l for l in self.net.layers if l.type in HEADS]
            self.loader.head = self.heads[-1]
            self._allocate()

    def truth_problem(self):
        if not np.isfinite(self._truth).all():
            return f"the truth holds non-finite values: check the labels of {self.train_set.source}"
        return None

    def head_lines(self):
        from ..layers.yolo import stats_line

        return [line for line in (stats_line(l) for l in self.heads) if line]

    def bar_suffix(self):
        """Per head: avg IoU, class, obj, no-obj and recall of the last mini-batch."""
        parts = []
        for l in self.heads:
            s = l.stats
            if not s:
                continue
            recall = s.get("recall_iou_gt_0.5", s.get("avg_recall_iou_gt_0.5", 0.0))
            cls = s.get("avg_class_prob", s.get("avg_true_class_prob", 0.0))
            parts.append(
                f"[{l.index}] IoU {s['avg_iou']:.2f} cls {cls:.2f} obj "
                f"{s['avg_obj_pos']:.2f} no-obj {s['avg_obj_all']:.3f} R {recall:.2f}"
            )
        return ("; " + "; ".join(parts)) if parts else ""

    # ---------------------------------------------------------- evaluation
    def evaluate_valid(self):
        return evaluate_detector(
            self.net,
            self.valid_set,
            self.loader.head.classes,
            points=self.points,
            limit=self.valid_limit,
        )

    def validate(self):
        size = (self.net.w, self.net.h)
        self.resize(*self.cfg_size)  # evaluated at the cfg's size
        try:
            return super().validate()
        finally:
            self.resize(*size)

    def describe_result(self, result):
        fields = {"map50": result["map50"], "map50_95": result["map"], "images": result["images"]}
        text = (
            f"mAP@0.5 = {result['map50']:.4f}, mAP@[.5:.95] = {result['map']:.4f} "
            f"on {result['images']} images"
        )
        return (result["map50"], max(result["map"], 0.0)), fields, text

    def _chart(self):
        from .chart import draw_chart

        try:
            draw_chart(
                f"{self.backup_dir}/{self.base}_chart.png",
                self.history,
                self.valid_history,
                title=self.base,
                names=("valid mAP", "mAP@0.5", "mAP@.5:.95"),
            )
        except OSError as exc:  # a chart is never worth losing a run
            self.say(f"warning: cannot write the chart: {exc}")

    # --------------------------------------------------------- checkpoints
    def state_arrays(self):
        arrays = super().state_arrays()
        arrays["detector/width"] = np.array(self.net.w, np.int64)
        arrays["detector/height"] = np.array(self.net.h, np.int64)
        return arrays

    def restore(self, weights_path, exact=True):
        message = super().restore(weights_path, exact)
        if self.restored:
            path = resolve_sidecar(weights_path, checkpoint_base(weights_path, self.base))
            state = read_sidecar(path, size_limit(self.net, self.n))
            if "detector/width" in state and "detector/height" in state:
                w, h = int(state["detector/width"]), int(state["detector/height"])
                if not (32 <= w <= 8192 and 32 <= h <= 8192):
                    raise CheckpointError(f"{path}: detector size {w} x {h} is not a network size")
                self.resize(w, h)
        return message


def valid_share(count, batch, rank, size):
    """Images ``[start, stop)`` of ``count`` that ``rank`` of ``size`` predicts:
    contiguous runs of whole forward batches, so each image is predicted in the
    very batch a single process puts it in (the same bytes)."""
    chunks = -(-count // batch)
    start, stop = chunks * rank // size * batch, chunks * (rank + 1) // size * batch
    return min(start, count), min(stop, count)


class DistributedDetectionTrainer(DistributedTrainer, DetectionTrainer):
    """The DetectionTrainer as one rank of a data-parallel job (``mpiexec -n N
    minidark detector train``; minidark/train/distributed.py).

    Rank r trains rows ``r·b … (r+1)·b - 1`` of the global batch, drawn as
    DistributedTrainer draws it. The multi-scale size and the one augmentation
    seed of each iteration come from the trainer's generator, which every rank
    advances alike: all ranks resize together, and image k of the update gets
    the distortion a single process with ``batch=N·b`` gives it. The per-head
    statistics in the log and on the bar are rank 0's own rows.

    Evaluation: each rank predicts a contiguous share of the valid images
    (``valid_share``), rank 0 gathers the detections in image order and
    computes mAP, the very numbers one process computes. The other ranks go
    on with the next batch meanwhile; their copy of the result is NaN (they
    write no file).
    """

    def __init__(self, net, train_set, valid_set=None, *, group, **options):
        super().__init__(net, train_set, valid_set, group=group, **options)
        self.first_row = group.rank * self.rows

    load_batch = DetectionTrainer.load_batch  # not the classifier's

    def evaluate_valid(self):
        net, valid, group = self.net, self.valid_set, self.group
        count = len(valid) if self.valid_limit is None else min(self.valid_limit, len(valid))
        start, stop = valid_share(count, net.batch, group.rank, group.size)
        detections, truths, _ = predict_dataset(net, valid, limit=stop, start=start)
        shares = group.comm.gather((detections, truths), root=0)
        if not group.root:
            return {"map50": math.nan, "map": math.nan, "images": count}
        detections = [d for share in shares for d in share[0]]
        truths = [t for share in shares for t in share[1]]
        return score_detections(detections, truths, self.loader.head.classes, self.points)
