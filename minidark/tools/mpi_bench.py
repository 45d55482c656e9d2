"""Training images/s of data-parallel MPI ranks against one process, side by side.

    python -m minidark.tools.mpi_bench [CFG ...] [--batch 128] [--iterations 12]
        [--repeats 3] [--ranks 2]

For each CFG (default: cfg/mnist_lenet.cfg) and a fixed global batch B, three
set-ups train the same SGD (one update of B images per iteration) on random
inputs, each in a fresh subprocess, interleaved ``--repeats`` times so that a
noisy, shared machine disturbs them alike:

* ``1 x 1``: one process, ``OPENBLAS_NUM_THREADS=1``, batch B;
* ``1 x N``: one process, N BLAS threads, batch B;
* ``N x 1``: ``mpiexec -n N``, one BLAS thread each, batch B/N per rank
  (gradients summed with the bucketed Allreduce of minidark/train/distributed.py).

Printed: the best images/s of each (the least disturbed run) and its ratio to
``1 x 1``. Data loading is left out (random inputs): this measures the
forward/backward/update and the allreduce.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def worker(cfg, batch, iterations, warmup=2):
    """One process or one rank: time ``iterations`` updates; rank 0 prints JSON."""
    import minidark
    from minidark.train import distributed

    group = distributed.join()
    size = 1 if group is None else group.size
    net = minidark.load_network(cfg, batch=batch // size, seed=1)
    rows = net.batch * net.subdivisions
    replicas = None if group is None else distributed.attach(net, group)
    rng = np.random.default_rng(0 if group is None else group.rank)
    x = rng.random((rows, net.inputs), dtype=np.float32)
    truth = np.zeros((rows, net.truths), np.float32)
    truth[np.arange(rows), rng.integers(0, net.truths, rows)] = 1

    def step():
        if replicas is not None:
            replicas.begin_update()
        net.train_step(x, truth)

    for _ in range(warmup):
        step()
    if group is not None:
        group.comm.Barrier()
    started = time.perf_counter()
    for _ in range(iterations):
        step()
    if group is not None:
        group.comm.Barrier()
    seconds = time.perf_counter() - started
    if group is None or group.root:
        print(json.dumps({"images_per_s": iterations * rows * size / seconds}), flush=True)


def measure(cfg, batch, iterations, ranks, threads, timeout=600):
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    command = [sys.executable, "-m", "minidark.tools.mpi_bench", "--worker", cfg]
    command += ["--batch", str(batch), "--iterations", str(iterations)]
    if ranks > 1:
        mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        command = [mpiexec if os.path.exists(mpiexec) else "mpiexec", "-n", str(ranks), *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])["images_per_s"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cfgs", nargs="*", metavar="CFG", default=["cfg/mnist_lenet.cfg"])
    parser.add_argument("--batch", type=int, default=128, help="global batch (default 128)")
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.cfgs[0], args.batch, args.iterations)
    n = args.ranks
    setups = [("1 x 1", 1, 1), (f"1 x {n}", 1, n), (f"{n} x 1", n, 1)]
    print(
        f"global batch {args.batch}, {args.iterations} updates per run, best of {args.repeats}; "
        f"{os.cpu_count()} CPUs; images/s (ratio to 1 process x 1 BLAS thread)"
    )
    for cfg in args.cfgs:
        best = {name: 0.0 for name, _, _ in setups}
        for _ in range(args.repeats):
            for name, ranks, threads in setups:
                rate = measure(cfg, args.batch, args.iterations, ranks, threads)
                best[name] = max(best[name], rate)
        base = best["1 x 1"]
        figures = ", ".join(
            f"{name}: {rate:,.0f} ({rate / base:.2f}x)" for name, rate in best.items()
        )
        print(f"{cfg}: {figures}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
