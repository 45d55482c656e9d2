"""One rank of a small data-parallel detector training, for
tests/train/test_distributed_detector.py.

    [mpiexec -n N] python distributed_detector_job.py ROOT CFG BACKUP OUT.npz
        --stop-at K [--weights W] [--seed S]

Trains CFG on the shapes data set in ROOT (``train.txt``, ``valid.txt``, as
test_detector_train.make_dataset writes it) through the command's trainers
(DistributedDetectionTrainer under mpiexec, DetectionTrainer otherwise) and
stops as Ctrl-C does once iteration K is done (so multi-scale stays on: the
cfg's max_batches is far). Rank 0 then writes every layer's saved arrays to
OUT.npz, beside the evaluation of the final weights two ways: the trainer's
(shared over the ranks) and ``evaluate_detector`` run by rank 0 alone.
"""

import argparse
import os
import sys

import numpy as np

import minidark
from minidark.data.detection import DetectionDataset
from minidark.train import distributed
from minidark.train.detection_eval import evaluate_detector
from minidark.train.detection_trainer import DetectionTrainer, DistributedDetectionTrainer


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("cfg")
    parser.add_argument("backup")
    parser.add_argument("out")
    parser.add_argument("--stop-at", type=int, required=True)
    parser.add_argument("--weights")
    parser.add_argument("--seed", type=int, default=2)  # draws 128, then 96 at iteration 10
    args = parser.parse_args(argv)
    group = distributed.join()
    if group is None:
        return train(args, None)
    with group.guard():
        return train(args, group)


def train(args, group):
    net = minidark.load_network(args.cfg, args.weights, seed=args.seed)
    train_set = DetectionDataset.from_list(os.path.join(args.root, "train.txt"), 2)
    valid_set = DetectionDataset.from_list(os.path.join(args.root, "valid.txt"), 2)
    options = dict(
        backup_dir=args.backup, base="job", seed=args.seed, progress=False, start=args.weights
    )
    if group is None:
        trainer = DetectionTrainer(net, train_set, valid_set, **options)
    else:
        distributed.attach(net, group)
        trainer = DistributedDetectionTrainer(net, train_set, valid_set, group=group, **options)
    if args.weights:
        trainer.restore(args.weights)
    load, sizes = trainer.load_batch, []

    def load_and_stop(indices):  # the request travels in this iteration's exchange
        batch = load(indices)
        sizes.append(net.w)
        if net.current_batch + 1 >= args.stop_at:
            trainer.request_stop()
        return batch

    trainer.load_batch = load_and_stop
    summary = trainer.run()
    trainer.resize(*trainer.cfg_size)
    shared = trainer.evaluate_valid()  # a collective: every rank takes part
    if group is None or group.root:
        alone = evaluate_detector(net, valid_set, 2)
        arrays = {
            f"{layer.index}/{name}": getattr(layer, name)
            for layer in net.layers
            for name in layer.saved
        }
        arrays["seen"] = np.array(net.seen)
        arrays["sizes"] = np.array(sizes)
        for key in ("map50", "map"):
            arrays[key] = np.array(shared[key])
            arrays[f"{key}_alone"] = np.array(alone[key])
        np.savez(args.out, **arrays)
        print(f"status {summary['status']} seen {net.seen}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
