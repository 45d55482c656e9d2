"""Fine-tuning experiment: a LeNet backbone trained on MNIST digits 0-4, reused for 5-9.

    python -m minidark.tools.finetune_digits [--out runs/finetune] [--pretrain 500]
        [--iterations 1000] [--batch 32] [--reuse] [--parallel]

1. writes IDX files of digits 0-4 and of 5-9 (train and test) under OUT;
2. ``minidark classifier train d04.data lenet.cfg`` (PRETRAIN iterations);
3. ``minidark partial lenet.cfg lenet.weights backbone.conv.4 4`` -- both
   convolutions (and their pools); the connected head starts fresh;
4. on digits 5-9, ITERATIONS iterations each, same seed and schedule:
   *frozen* (``stopbackward=1`` on layer 3: the backbone gets no gradient),
   *full* (everything trains), both from ``backbone.conv.4 --clear``, and
   *scratch* (no weights);
5. prints the 5-9 test top-1 at iterations 100, 300 and ITERATIONS (from
   each run's ``<base>_metrics.jsonl``) and every command it ran.
"""

import argparse
import gzip
import json
import os
import shlex
import struct
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_idx(path, array):
    """An IDX ubyte file (gzip): magic 0x08 <ndim>, big-endian sizes, bytes."""
    header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_subsets(out, mnist):
    from minidark.data.mnist import read_idx

    for split, stem in (("train", "train"), ("t10k", "t10k")):
        images = read_idx(os.path.join(mnist, f"{stem}-images-idx3-ubyte.gz"))
        labels = read_idx(os.path.join(mnist, f"{stem}-labels-idx1-ubyte.gz"))
        for name, digits in (("d04", range(5)), ("d59", range(5, 10))):
            keep = np.isin(labels, list(digits))
            folder = os.path.join(out, name)
            os.makedirs(folder, exist_ok=True)
            write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"), images[keep])
            write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"), labels[keep])


def cfg_text(iterations, batch, frozen=False):
    with open(os.path.join(ROOT, "cfg", "mnist_lenet.cfg")) as f:
        lines = f.read().splitlines()
    out, section = [], None
    for line in lines:
        key = line.split("=")[0].strip()
        if line.startswith("#"):
            continue
        if line.startswith("["):
            section = -1 if section is None else section + 1  # [net] -1, layers 0, 1 ...
            if frozen and section == 4:  # before layer 4: layer 3 is the last maxpool
                out.append("stopbackward=1")
        if section == -1 and key in (
            "batch",
            "max_batches",
            "valid_every",
            "steps",
            "scales",
            "policy",
            "learning_rate",
            "backup_every",
        ):
            continue
        out.append(line)
        if line.strip() == "[net]":
            out += [
                f"batch={batch}",
                f"max_batches={iterations}",
                "valid_every=100",
                "policy=constant",
                "learning_rate=0.02",
                f"backup_every={iterations}",
            ]
    return "\n".join(out) + "\n"


def run(argv, log):
    # A child process, as a user would run the command (tools sit below the CLI).
    log.append("minidark " + " ".join(shlex.quote(str(a)) for a in argv))
    print(log[-1], flush=True)
    status = subprocess.call([sys.executable, "-m", "minidark", *map(str, argv)])
    if status:
        raise SystemExit(f"failed ({status}): {log[-1]}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/finetune")
    parser.add_argument("--mnist", default=os.path.join(ROOT, "data", "mnist"))
    parser.add_argument("--pretrain", type=int, default=500)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reuse", action="store_true", help="keep an existing pretrained net")
    parser.add_argument("--parallel", action="store_true", help="the three runs at once")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    write_subsets(out, args.mnist)
    names = os.path.join(ROOT, "data", "mnist.names")
    for name in ("d04", "d59"):
        with open(os.path.join(out, f"{name}.data"), "w") as f:
            f.write(
                f"classes=10\ntrain={out}/{name}/train-images-idx3-ubyte.gz\n"
                f"valid={out}/{name}/t10k-images-idx3-ubyte.gz\nnames={names}\n"
                f"backup={out}/backup_{name}\ntop=1\n"
            )
    for base, iterations, frozen in (
        ("lenet", args.pretrain, False),
        ("frozen", args.iterations, True),
        ("full", args.iterations, False),
        ("scratch", args.iterations, False),
    ):
        with open(os.path.join(out, f"{base}.cfg"), "w") as f:
            f.write(cfg_text(iterations, args.batch, frozen))
    log = []
    seed = ["--seed", args.seed, "--no-progress"]
    pretrained = f"{out}/backup_d04/lenet.weights"
    if not (args.reuse and os.path.exists(pretrained)):
        run(["classifier", "train", f"{out}/d04.data", f"{out}/lenet.cfg", *seed], log)
    backbone = f"{out}/backbone.conv.4"
    run(["partial", f"{out}/lenet.cfg", pretrained, backbone, 4], log)
    runs = [
        ["classifier", "train", f"{out}/d59.data", f"{out}/{base}.cfg", backbone, "--clear", *seed]
        for base in ("frozen", "full")
    ] + [["classifier", "train", f"{out}/d59.data", f"{out}/scratch.cfg", *seed]]
    if args.parallel:  # three processes: independent runs, same results as one after another
        children = []
        for argv in runs:
            log.append("minidark " + " ".join(shlex.quote(str(a)) for a in argv))
            print(log[-1], flush=True)
            children.append(subprocess.Popen([sys.executable, "-m", "minidark", *map(str, argv)]))
        if any(child.wait() for child in children):
            raise SystemExit("a fine-tuning run failed")
    else:
        for argv in runs:
            run(argv, log)
    marks = (100, 300, args.iterations)
    print(f"\ndigits 5-9 test top-1 (%) after N iterations of batch {args.batch}:")
    print(f"{'run':<10}" + "".join(f"{m:>8}" for m in marks))
    for base in ("frozen", "full", "scratch"):
        with open(f"{out}/backup_d59/{base}_metrics.jsonl") as f:
            records = {r["iteration"]: r for r in map(json.loads, f)}
        cells = [records.get(m, {}).get("top1") for m in marks]
        print(
            f"{base:<10}"
            + "".join(f"{100 * c:8.2f}" if c is not None else f"{'-':>8}" for c in cells)
        )
    print("\ncommands:\n" + "\n".join(log))
    return 0


if __name__ == "__main__":
    sys.exit(main())
