"""One rank of a small data-parallel training job, for tests/train/test_distributed.py.

    [mpiexec -n N] python distributed_job.py CFG BACKUP OUT.npz [--fault KIND:RANK:ITERATION]
        [--weights W] [--images N] [--seed S]

Trains CFG on a synthetic data set (``--images`` random 8x8 grey images in 10
classes, the same for every rank) through the command's code path
(DistributedTrainer under mpiexec, the plain Trainer otherwise) and writes
every layer's saved arrays to OUT.npz (rank 0). ``--fault`` makes one rank
fail at one iteration: ``nan`` (a NaN input batch), ``raise`` (an exception),
``kill`` (SIGKILL to itself), ``sigint`` (SIGINT to itself: the first rank
that a Ctrl-C forwarded by mpiexec reaches, before the others).
"""

import argparse
import os
import signal
import sys

import numpy as np

import minidark
from minidark.data.dataset import Dataset
from minidark.train import distributed
from minidark.train.trainer import Trainer


def synthetic(n, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 200, (n, 1, 8, 8)).astype(np.uint8)
    images[np.arange(n), 0, labels % 8, labels // 8 * 3] = 255  # a learnable mark
    return Dataset(images, labels, f"synthetic-{n}")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("cfg")
    parser.add_argument("backup")
    parser.add_argument("out")
    parser.add_argument("--weights")
    parser.add_argument("--fault")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    group = distributed.join()
    if group is None:
        return train(args, None)
    with group.guard():
        return train(args, group)


def train(args, group):
    net = minidark.load_network(args.cfg, args.weights, seed=args.seed)
    options = dict(
        backup_dir=args.backup, base="job", seed=args.seed, progress=False, start=args.weights
    )
    data = synthetic(args.images)
    valid = synthetic(100, seed=1)
    if group is None:
        trainer = Trainer(net, data, valid, **options)
    else:
        distributed.attach(net, group)
        trainer = distributed.DistributedTrainer(net, data, valid, group=group, **options)
    if args.weights:
        trainer.restore(args.weights)
    rank = 0 if group is None else group.rank
    if args.fault:
        kind, fault_rank, at = args.fault.split(":")
        install_fault(trainer, kind, int(fault_rank), int(at), rank)
    summary = trainer.run()
    if rank == 0:
        arrays = {
            f"{layer.index}/{name}": getattr(layer, name)
            for layer in net.layers
            for name in layer.saved
        }
        arrays["seen"] = np.array(net.seen)
        if summary.get("accuracy"):
            arrays["top1"] = np.array(summary["accuracy"]["top1"])
        np.savez(args.out, **arrays)
        print(f"status {summary['status']} seen {net.seen}", flush=True)
    return 0


def install_fault(trainer, kind, fault_rank, at, rank):
    load = trainer.load_batch

    def faulty_load(indices):
        x, truth = load(indices)
        iteration = trainer.net.current_batch
        if rank == fault_rank and iteration == at:
            if kind == "sigint":  # mpiexec forwards Ctrl-C to every rank, each at its instant
                os.kill(os.getpid(), signal.SIGINT)
            elif kind == "nan":
                x[0, 0] = np.nan
            elif kind == "raise":
                raise RuntimeError("injected failure")
            elif kind == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
        return x, truth

    trainer.load_batch = faulty_load


if __name__ == "__main__":
    sys.exit(main())
