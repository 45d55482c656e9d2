"""Measure the streaming loader (data/stream.py): memory, throughput, waiting.

    python -m minidark.tools.loader_bench [--paths 1000000] [--workers 1 2]
        [--iterations 20] [--skip-rss]

1. **Memory**: peak RSS of a process that trains a small net for a few
   iterations from an image list of 1,000 paths, then of ``--paths`` paths
   (distinct paths through symbolic links to a few PNGs), each in a fresh
   process; the difference is what the list costs.
2. **Throughput**: images/s of the loader alone at 224x224 from 500x375
   JPEGs with darknet's augmentation (crop 224..448, angle 7, aspect 1.15,
   hue .1, saturation and exposure 1.5, flip), per worker count, threads
   and processes.
3. **Waiting**: the fraction of the training loop's time spent waiting for
   the loader, training LeNet (cfg/mnist_lenet.cfg, batch 128) on 28x28 PNGs
   with augmentation, and a 224x224 network (tests/cfg/stock/tiny.cfg, batch 8).
"""

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from .bench.worker import process_peak_rss_mb

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LABELS = ["cat", "dog"]
SMALL_NET = """[net]
batch=16
height=32
width=32
channels=3
learning_rate=0.01
momentum=0.9
max_batches={iterations}
backup_every=0
[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky
[avgpool]
[connected]
output=2
activation=linear
[softmax]
"""
AUGMENT = (
    "min_crop={low}\nmax_crop={high}\nangle=7\naspect=1.15\nhue=.1\nsaturation=1.5\nexposure=1.5\n"
)


def write_images(folder, size, count, mode="RGB", fmt="JPEG"):
    from PIL import Image

    rng = np.random.default_rng(0)
    names = []
    for i in range(count):
        w, h = size
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((w, h), Image.BILINEAR).convert(mode)
        name = os.path.join(folder, f"{LABELS[i % 2]}_{i}.{fmt.lower()}")
        image.save(name, fmt)
        names.append(name)
    return names


def link_list(folder, sources, paths):
    """A list of ``paths`` distinct paths to ``sources``: 1000 symbolic links to
    them in one folder, seen through ``paths / 1000`` symbolic links to that folder."""
    real = os.path.join(folder, "real")
    os.makedirs(real)
    per_folder = min(paths, 1000)
    names = []
    for i in range(per_folder):
        source = sources[i % len(sources)]
        names.append(f"{i}_{os.path.basename(source)}")
        os.symlink(source, os.path.join(real, names[-1]))
    list_path = os.path.join(folder, f"{paths}.list")
    with open(list_path, "w") as f:
        for k in range(-(-paths // per_folder)):
            shard = os.path.join(folder, f"d{k:05d}")
            os.symlink(real, shard)
            count = min(per_folder, paths - k * per_folder)
            f.write("".join(f"{shard}/{name}\n" for name in names[:count]))
    return list_path


def train_child(list_path, iterations, workers):
    """In a fresh process: train SMALL_NET from ``list_path``; print peak RSS (MB)."""
    import minidark
    from minidark.data.stream import ImageList
    from minidark.train.stream_trainer import StreamingTrainer

    folder = tempfile.mkdtemp()
    cfg = os.path.join(folder, "small.cfg")
    with open(cfg, "w") as f:
        f.write(SMALL_NET.format(iterations=iterations) + "")
    net = minidark.load_network(cfg, seed=1)
    images = ImageList(list_path)
    trainer = StreamingTrainer(
        net,
        images,
        labels=LABELS,
        workers=workers,
        backup_dir=folder,
        base="small",
        seed=1,
        progress=False,
        out=io.StringIO(),
    )
    trainer.run()
    trainer.close()
    shutil.rmtree(folder)
    print(f"{len(images)} {process_peak_rss_mb():.1f}")  # (ru_maxrss: the parent's)


def measure_rss(folder, paths, iterations, workers):
    sources = write_images(folder, (40, 30), 4, fmt="PNG")
    rows = []
    for count in (1000, paths):
        sub = os.path.join(folder, f"list{count}")
        os.makedirs(sub)
        tick = time.perf_counter()
        list_path = link_list(sub, sources, count)
        made = time.perf_counter() - tick
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "minidark.tools.loader_bench",
                "--child",
                list_path,
                "--iterations",
                str(iterations),
                "--workers",
                str(workers),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.split()
        rows.append((int(out[-2]), float(out[-1]), made))
        shutil.rmtree(sub)
    print(
        "peak RSS training from an image list (small net, "
        f"{iterations} iterations of 16, {workers} worker threads):"
    )
    for count, peak, made in rows:
        print(f"  {count:>9,} paths: {peak:8.1f} MB   (list of symlinks made in {made:.1f} s)")
    print(f"  difference: {rows[1][1] - rows[0][1]:.1f} MB")


def measure_throughput(folder, workers_list, images_per_run):
    from minidark.data.preprocess import TrainAugment
    from minidark.data.stream import ImageList, Preprocess, StreamingLoader

    names = write_images(folder, (500, 375), 8)
    list_path = os.path.join(folder, "jpeg.list")
    with open(list_path, "w") as f:
        f.write("\n".join(names) + "\n")

    class Net224:  # what TrainAugment reads of a network
        w = h = 224
        c = 3
        angle, aspect, hue, saturation, exposure, flip = 7, 1.15, 0.1, 1.5, 1.5, 1

        class config:
            min_ratio, max_ratio = 1.0, 2.0

    preprocess = Preprocess("train", (3, 224, 224), LABELS, TrainAugment(Net224))
    images = ImageList(list_path)
    batch = 16
    out = np.empty((batch, 3 * 224 * 224), np.float32)
    print(
        f"loader throughput, 224x224 from 500x375 JPEG (Pillow "
        f"{__import__('PIL').__version__}), darknet's augmentation:"
    )
    for kind in ("thread", "process"):
        for workers in workers_list:
            with StreamingLoader(images, preprocess, workers, kind) as loader:
                loader.collect(loader.submit(np.arange(batch) % 8, np.arange(batch)), out)
                tick = time.perf_counter()
                done = 0
                seed = 0
                while done < images_per_run:
                    idx = np.arange(batch) % 8
                    loader.collect(loader.submit(idx, np.arange(seed, seed + batch)), out)
                    seed += batch
                    done += batch
                rate = done / (time.perf_counter() - tick)
            print(
                f"  {kind:>7} x{workers}: {rate:7.1f} images/s ({rate / workers:6.1f} per worker)"
            )


def measure_wait(folder, iterations, workers):
    import minidark
    from minidark.data.stream import ImageList
    from minidark.train.stream_trainer import StreamingTrainer

    cases = [
        (
            "LeNet 28x28x1, batch 128",
            os.path.join(ROOT, "cfg", "mnist_lenet.cfg"),
            (28, 28),
            "L",
            {"batch": 128, "min_crop": 28, "max_crop": 34, "angle": 7},
        ),
        (
            "tiny darknet 224x224x3, batch 8",
            os.path.join(ROOT, "tests", "cfg", "stock", "tiny.cfg"),
            (500, 375),
            "RGB",
            {"batch": 8, "subdivisions": 1},
        ),
    ]
    print(f"training loop waiting for the loader ({workers} worker threads):")
    for title, cfg_path, size, mode, overrides in cases:
        sub = tempfile.mkdtemp(dir=folder)
        names = write_images(sub, size, 16, mode=mode, fmt="PNG" if mode == "L" else "JPEG")
        list_path = os.path.join(sub, "train.list")
        with open(list_path, "w") as f:  # 16 files, 256 entries: no update repeats an image
            f.write("\n".join(names * 16) + "\n")
        with open(cfg_path) as f:
            text = f.read()
        lines = []
        for line in text.splitlines():
            key = line.split("=")[0].strip()
            if key in overrides or key in ("max_batches", "valid_every", "backup_every", "flip"):
                continue
            lines.append(line)
            if line.strip() in ("[net]", "[network]"):
                lines += [f"{k}={v}" for k, v in overrides.items()]
                lines += [f"max_batches={iterations}", "backup_every=0", "valid_every=0"]
        text = "\n".join(lines)
        classes = 2
        text = text.replace("output=10\n", f"output={classes}\n").replace(
            "filters=1000\n", f"filters={classes}\n"
        )
        cfg = os.path.join(sub, "net.cfg")
        with open(cfg, "w") as f:
            f.write(text)
        net = minidark.load_network(cfg, seed=1)
        trainer = StreamingTrainer(
            net,
            ImageList(list_path),
            labels=LABELS,
            workers=workers,
            backup_dir=sub,
            base="w",
            seed=1,
            progress=False,
            out=io.StringIO(),
        )
        tick = time.perf_counter()
        trainer.run()
        total = time.perf_counter() - tick
        trainer.close()
        wait = trainer.wait_seconds
        print(
            f"  {title}: {iterations} iterations in {total:.1f} s, waiting {wait:.2f} s "
            f"= {100 * wait / total:.1f}%  ({iterations * trainer.rows / total:.0f} img/s)"
        )
        shutil.rmtree(sub)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paths", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--throughput-images", type=int, default=192)
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-wait", action="store_true")
    parser.add_argument("--child", metavar="LIST", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        train_child(args.child, args.iterations, args.workers[0])
        return 0
    folder = tempfile.mkdtemp(prefix="minidark-loader-bench-")
    try:
        if not args.skip_rss:
            measure_rss(folder, args.paths, args.iterations, max(args.workers))
        if not args.skip_throughput:
            measure_throughput(folder, args.workers, args.throughput_images)
        if not args.skip_wait:
            measure_wait(folder, args.iterations, max(args.workers))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
