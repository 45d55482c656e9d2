"""darknet's hierarchy trees (tree.c) for [softmax] tree=... .

A tree file has one node per line, ``<name> <parent index>`` (parent -1 for
the top level). A *group* is a maximal run of consecutive lines with the
same parent, so siblings must be contiguous; the softmax runs per group.
"""

import numpy as np

from ..errors import ConfigError, printable
from ..files import TEXT_LIMIT, read_text

SECRET_NUM = -1234.0  # darknet's "no label here" truth value


class Tree:
    def __init__(self, names, parents):
        self.n = len(names)
        self.name = list(names)
        self.parent = list(parents)
        self.leaf = [1] * self.n
        self.child = [-1] * self.n
        self.group = [0] * self.n
        self.group_offset, self.group_size = [], []
        last_parent = None
        for i, parent in enumerate(parents):
            if i == 0 or parent != last_parent:
                self.group_offset.append(i)
                self.group_size.append(0)
            group = len(self.group_offset) - 1
            self.group[i] = group
            self.group_size[group] += 1
            if parent >= 0:
                self.leaf[parent] = 0
                self.child[parent] = group
            last_parent = parent
        self.groups = len(self.group_offset)


def read_tree(path, options=None):
    """Read a tree file; errors name the file and line (and the cfg key)."""

    def fail(message, line=None):
        if options is not None:
            return options.error(f"{path}{':' + str(line) if line else ''}: {message}", "tree")
        return ConfigError(message, file=path, line=line)

    def refused(message):  # read_text's messages start with the path, which fail() adds
        return fail(message.removeprefix(f"{printable(path)}: "))

    # a FIFO, a device or a huge file is refused before reading (minidark.files)
    lines = read_text(path, "tree file", TEXT_LIMIT, refused).splitlines()
    names, parents = [], []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            name, parent = fields[0], int(fields[1])
        except (IndexError, ValueError):
            raise fail("expected '<name> <parent index>'", number) from None
        if parent >= len(names) or parent < -1:
            raise fail(f"parent {parent} must be -1 or an earlier line's index", number)
        names.append(name)
        parents.append(parent)
    if not names:
        raise fail("tree file is empty")
    return Tree(names, parents)


def fill_hierarchy(truth, tree):
    """darknet's fill_hierarchy, vectorised over rows: set every ancestor of a
    positive label, and mark each group with no positive as SECRET_NUM."""
    truth = np.asarray(truth, np.float32).copy()
    for j in range(tree.n - 1, -1, -1):  # children come after parents
        p = tree.parent[j]
        if p >= 0:
            truth[:, p] = np.maximum(truth[:, p], truth[:, j] > 0)
    for offset, size in zip(tree.group_offset, tree.group_size, strict=True):
        block = truth[:, offset : offset + size]
        empty = ~(block > 0).any(axis=1)
        block[empty] = SECRET_NUM
    return truth


def hierarchy_predictions(probs, tree, only_leaves=False):
    """p[j] *= p[parent[j]] in index order (absolute probabilities)."""
    probs = np.array(probs, np.float32, copy=True)
    for j in range(tree.n):
        p = tree.parent[j]
        if p >= 0:
            probs[:, j] *= probs[:, p]
    if only_leaves:
        probs[:, [i for i in range(tree.n) if not tree.leaf[i]]] = 0
    return probs
