"""Mutated stock cfgs: a hostile value, a misspelt key or a doubled section in
a real network gives a Network or a one-line ConfigError naming the file and
line -- never another exception, a hang or a MemoryError.

Run as a script for a campaign with counts per outcome::

    python tests/cfg/test_cfg_fuzz.py [CASES] [SEED]
"""

import os
import random
import sys
import time
import warnings
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minidark.cfg import parse_network, read_cfg_text
from minidark.errors import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CLASSIFIERS = [os.path.join(ROOT, "cfg", f"mnist_{name}.cfg") for name in ("mlp", "lenet", "bn")]
CLASSIFIERS += [os.path.join(HERE, "stock", f"{name}.cfg") for name in ("tiny", "cifar", "mixed")]
EVERY_CFG = sorted(
    [
        os.path.join(ROOT, "cfg", name)
        for name in os.listdir(os.path.join(ROOT, "cfg"))
        if name.endswith(".cfg")
    ]
    + [os.path.join(HERE, "stock", name) for name in os.listdir(os.path.join(HERE, "stock"))]
)
MEMORY = 2 << 30  # a fixed limit: the outcome must not depend on the machine

HOSTILE = [
    "0",
    "-1",
    "1",
    "2",
    "-2147483649",
    "2147483648",
    "99999999999999999999",
    "1e20",
    "-1e20",
    "1e-50",
    "1e39",
    "nan",
    "inf",
    "-inf",
    "0.5",
    "-0.5",
    "3.7",
    "1000000",
    "65536",
    "abc",
    "1,2",
    ",",
    "0x10",
    "1_000",
    "\u0661",
    "\x1b[2J",
    "9" * 400,
    "relu",
    "steps",
    "-0",
]


def mutate(text, rng):
    """One mutation of cfg text: a value, a key, a section or a line."""
    lines = text.split("\n")
    options = [i for i, line in enumerate(lines) if "=" in line and not line.startswith("#")]
    kind = rng.choice(["value", "value", "value", "typo", "insert", "section", "drop"])
    i = rng.choice(options)
    key, _, value = lines[i].partition("=")
    key = key.strip()
    if kind == "value":
        lines[i] = f"{key}={rng.choice(HOSTILE)}"
    elif kind == "typo" and len(key) > 3:
        j = rng.randrange(len(key) - 1)
        typo = rng.choice(
            [
                key[:j] + key[j + 1 :],
                key[:j] + key[j + 1] + key[j] + key[j + 2 :],
                key[:j] + key[j] + key[j:],
            ]
        )
        lines[i] = f"{typo}={value}"
    elif kind == "insert":
        other = lines[rng.choice(options)].partition("=")[0].strip()
        lines.insert(i, f"{other}={rng.choice(HOSTILE)}")
    elif kind == "section":
        headers = [j for j, line in enumerate(lines) if line.startswith("[")]
        lines.insert(rng.choice(headers), lines[rng.choice(headers)])
    else:
        del lines[i]
    return "\n".join(lines)


def outcome(text, file):
    """'network', 'error' or 'warned+network'; raises on anything but a clear ConfigError."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parse_network(
                read_cfg_text(text, file=file), file=file, batch=1, verbose=False, max_memory=MEMORY
            )
        except ConfigError as error:
            message = str(error)
            if "\n" in message or not message.startswith(file) or not message.isprintable():
                raise AssertionError(f"not a clear one-line error: {message!r}") from None
            return "error"
    return "warned+network" if caught else "network"


@settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.sampled_from(CLASSIFIERS), st.integers(0, 2**32 - 1))
def test_mutated_stock_cfgs(path, seed):
    with open(path, encoding="utf-8") as handle:
        text = mutate(handle.read(), random.Random(seed))
    start = time.perf_counter()
    outcome(text, path)
    assert time.perf_counter() - start < 10, "parse took too long"


def test_mutation_can_fail():
    # the harness reports an exception that is not a ConfigError
    with pytest.raises(ZeroDivisionError), pytest.MonkeyPatch.context() as patch:
        patch.setattr("minidark.cfg.builder.read_net_config", lambda s: 1 / 0)
        outcome("[net]\ninputs=4\n[softmax]\n", "x.cfg")


def campaign(cases, seed):
    """Counts of outcomes over ``cases`` mutations of every cfg, and the failures."""
    rng = random.Random(seed)
    counts, failures = Counter(), []
    texts = {}
    for path in EVERY_CFG:
        with open(path, encoding="utf-8") as handle:
            texts[path] = handle.read()
    for _ in range(cases):
        path = rng.choice(EVERY_CFG)
        text = mutate(texts[path], rng)
        start = time.perf_counter()
        try:
            counts[outcome(text, path)] += 1
        except Exception as exc:  # the campaign records every kind
            counts[f"FAIL {type(exc).__name__}"] += 1
            failures.append((path, f"{type(exc).__name__}: {str(exc)[:200]}"))
        if time.perf_counter() - start > 10:
            counts["slow (>10 s)"] += 1
    return counts, failures


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    counts, failures = campaign(n, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    for name, count in counts.most_common():
        print(f"{count:6d}  {name}")
    for path, message in failures[:40]:
        print(f"  {os.path.relpath(path, ROOT)}: {message}")
