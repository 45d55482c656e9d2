"""A kill -9 and damaged-sidecar campaign against ``minidark classifier train``.

Not a unit test (it takes minutes): run it by hand after changing checkpoint
code, and quote its counts::

    python tests/train/campaign_checkpoints.py [--kills 40] [--sidecars 100] [--seed 1]

Kills: the tiny cfg on the tiny IDX set with a backup every iteration,
``--seed`` fixed; each case kills the training process (SIGKILL) at a random
instant, resumes from ``backup/tiny.backup`` (from scratch with the same seed
when there is none yet), kills again with probability 1/2, and so on, then
compares the final ``tiny.weights`` with an uninterrupted run's, byte for
byte, and looks for leftover temporary files. Sidecars: random damage
(flipped bytes, cuts, junk, deleted or swapped members) to a sidecar, then a
resume through the CLI: each outcome is classed by exit status, the number
of error lines and whether a traceback appeared.
"""

import argparse
import collections
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from tiny_training import write_tiny_cfg, write_tiny_data_file  # noqa: E402


def command(data, cfg, weights=None):
    return (
        [sys.executable, "-m", "minidark", "classifier", "train", data, cfg]
        + ([weights] if weights else [])
        + ["--seed", "3", "--no-progress"]
    )


def read(path):
    with open(path, "rb") as handle:
        return handle.read()


def write(path, content):
    with open(path, "wb") as handle:
        handle.write(content)


def run_to_end(data, cfg, folder):
    """Resume (or start) until the run finishes; the last process's output."""
    backup = os.path.join(folder, "tiny.backup")
    result = subprocess.run(
        command(data, cfg, backup if os.path.exists(backup) else None),
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return result


def kills(cases, rng, work):
    data = write_tiny_data_file(work)
    cfg = write_tiny_cfg(work, max_batches=40, backup_every=1)
    straight = subprocess.run(command(data, cfg), capture_output=True, text=True, cwd=ROOT)
    assert straight.returncode == 0, straight.stderr
    folder = os.path.join(work, "backup")
    reference = read(os.path.join(folder, "tiny.weights"))
    started = time.perf_counter()
    outcomes, total_kills = collections.Counter(), 0
    for case in range(cases):
        shutil.rmtree(folder, ignore_errors=True)
        while True:
            backup = os.path.join(folder, "tiny.backup")
            proc = subprocess.Popen(
                command(data, cfg, backup if os.path.exists(backup) else None),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                cwd=ROOT,
            )
            time.sleep(rng.uniform(0.3, 2.5))  # imports take ~1 s of that
            proc.kill()
            _, err = proc.communicate()
            if proc.returncode != -9:  # it finished (or failed) first
                break
            total_kills += 1
            if rng.random() < 0.5:
                break
        if proc.returncode not in (0, -9):
            outcomes["error: " + err.decode().strip().splitlines()[-1][:80]] += 1
            continue
        result = run_to_end(data, cfg, folder)
        final = os.path.join(folder, "tiny.weights")
        if result.returncode != 0 or "Traceback" in result.stderr:
            outcomes["resume failed: " + result.stderr.strip().splitlines()[-1][:80]] += 1
        elif read(final) != reference:
            outcomes["final weights differ"] += 1
        elif any(n.startswith(".tmp-") or n.endswith(".next") for n in os.listdir(folder)):
            outcomes["identical, but leftovers"] += 1
        else:
            outcomes["identical"] += 1
        print(f"kill case {case + 1}/{cases}: {dict(outcomes)}", flush=True)
    return outcomes, total_kills, time.perf_counter() - started


def damage(path, rng):
    content = bytearray(read(path))
    kind = rng.choice(["flip", "cut", "junk", "drop member", "empty", "swap member"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            content[rng.randrange(len(content))] ^= rng.randint(1, 255)
    elif kind == "cut":
        content = content[: rng.randrange(len(content))]
    elif kind == "junk":
        content = bytearray(rng.randbytes(rng.randint(1, 5000)))
    elif kind == "empty":
        content = bytearray()
    else:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: archive.read(info) for info in archive.infolist()}
        names = sorted(members)
        if kind == "drop member":
            del members[rng.choice(names)]
        else:
            a, b = rng.sample(names, 2)
            members[a], members[b] = members[b], members[a]
        with zipfile.ZipFile(path, "w") as archive:
            for name, value in members.items():
                archive.writestr(name, value)
        return kind
    write(path, bytes(content))
    return kind


def sidecars(cases, rng, work):
    data = write_tiny_data_file(work)
    cfg = write_tiny_cfg(work, max_batches=6, backup_every=2)
    longer = write_tiny_cfg(work, max_batches=8, backup_every=2, name="longer.cfg")
    first = subprocess.run(command(data, cfg), capture_output=True, text=True, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    folder = os.path.join(work, "backup")
    keep = os.path.join(work, "keep")
    shutil.copytree(folder, keep)
    outcomes = collections.Counter()
    for case in range(cases):
        shutil.rmtree(folder)
        shutil.copytree(keep, folder)
        kind = damage(os.path.join(folder, "tiny.backup.state.npz"), rng)
        result = subprocess.run(
            command(data, longer, os.path.join(folder, "tiny.backup")),
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        errors = [line for line in result.stderr.splitlines() if line.startswith("minidark: error")]
        if "Traceback" in result.stderr:
            outcome = "TRACEBACK " + result.stderr.strip().splitlines()[-1][:100]
        elif result.returncode == 0:
            outcome = "resumed (damage in bytes zip does not read)"
        elif len(errors) == 1 and "--no-exact-resume" in errors[0]:
            outcome = "one-line error with --no-exact-resume"
        else:
            outcome = f"other exit {result.returncode}: {errors[-1][:80] if errors else ''}"
        outcomes[f"{kind}: {outcome}"] += 1
        print(f"sidecar case {case + 1}/{cases}: {kind}: {outcome}", flush=True)
    return outcomes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--sidecars", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="minidark-campaign-") as work:
        os.makedirs(os.path.join(work, "k"))
        os.makedirs(os.path.join(work, "s"))
        outcomes, total, seconds = kills(args.kills, rng, os.path.join(work, "k"))
        print(f"\nkill -9: {args.kills} cases, {total} kills, {seconds:.0f} s: {dict(outcomes)}")
        damaged = sidecars(args.sidecars, rng, os.path.join(work, "s"))
        print(f"damaged sidecars: {args.sidecars} cases:")
        for outcome, count in sorted(damaged.items()):
            print(f"  {count:4d}  {outcome}")


if __name__ == "__main__":
    main()
