"""darknet's .weights format, read and written (parser.c save/load_weights).

Header (little-endian): int32 major, int32 minor, int32 revision, then
``seen`` as uint64 when ``major*10 + minor >= 2`` (and both < 1000), else as
int32 (16-byte legacy header). Files with major or minor > 1000 store
connected weights transposed. Then, per layer in order, the float32 arrays
its ``saved`` tuple names, e.g. connected: biases, weights, [scales,
rolling_mean, rolling_variance]; convolutional: biases, [scales,
rolling_mean, rolling_variance], weights. Layers without parameters write
nothing.

Loading into another network (darknet's load_weights_upto): ``cutoff=N``
reads only layers 0..N-1; a layer with ``dontload=1`` is not in the file (no
bytes are read for it); ``dontloadscales=1`` (convolutional, connected) reads
no batch-norm scales/statistics; ``numload=K`` (convolutional) reads the
first K filters; ``flipped=1`` (convolutional) transposes the weights read
as (c*k*k, n). A file that ends exactly at a layer boundary (darknet's
``partial`` output, ``*.conv.N``) loads the layers it holds and says how
many; bytes past the last layer read are accepted only with a cutoff or a
``dontload`` layer (a new head), and said.

Deliberate fixes: a file that ends inside a layer, or one with bytes left
over (without cutoff or dontload), is an error naming the layer (darknet
silently keeps random weights or ignores the rest); a header whose
version or ``seen`` no darknet writes is an error about the header (not "the
file does not fit this cfg"); NaN or inf in a loaded array is an error naming
the layer and array; a FIFO, a device or a file larger than the cfg needs is
refused before reading; saving writes a temporary file, fsyncs and renames,
so a crash never leaves a torn file.
"""

from __future__ import annotations

import os
import struct
import sys
import tempfile
from typing import TYPE_CHECKING

import numpy as np

from .errors import WeightsError, printable
from .files import open_regular

if TYPE_CHECKING:
    from .network import Network

MAJOR, MINOR, REVISION = 0, 2, 0


BATCH_NORM_ARRAYS = ("scales", "rolling_mean", "rolling_variance")


def _layers(net, skip_flag, cutoff=None):
    for layer in net.layers[:cutoff]:
        if layer.saved and not getattr(layer, skip_flag):
            yield layer


def file_arrays(layer):
    """(name, float count) of the arrays ``layer`` reads from a .weights file,
    in file order (darknet's load_convolutional/connected_weights)."""
    arrays = []
    for name in layer.saved:
        if layer.dontloadscales and name in BATCH_NORM_ARRAYS:
            continue
        count = getattr(layer, name).size
        if layer.numload:  # the first numload filters: a prefix of every array
            count = count // layer.out_c * layer.numload
        arrays.append((name, count))
    return arrays


def weights_bytes(net, cutoff=None):
    """The bytes of a .weights file for ``net`` (header + parameters), of
    layers 0..cutoff-1 only with ``cutoff`` (darknet's save_weights_upto)."""
    parts = [struct.pack("<iiiQ", MAJOR, MINOR, REVISION, int(net.seen))]
    for layer in _layers(net, "dontsave", cutoff):
        for name in layer.saved:
            parts.append(np.ascontiguousarray(getattr(layer, name), dtype="<f4").tobytes())
    return b"".join(parts)


def atomic_write(path, data):
    """Write bytes to ``path`` via a temporary file (``.tmp-XXXXXXXX<name>`` beside
    it), fsync and rename; on any error the temporary file is removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    try:
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would make checkpoints private
            view = memoryview(data).cast("B")
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def save_weights(net: Network, path: str | os.PathLike, cutoff: int | None = None) -> None:
    """Write ``net``'s parameters (of layers 0..cutoff-1 with ``cutoff``) as a
    darknet .weights file, atomically."""
    atomic_write(path, weights_bytes(net, cutoff))


MAX_VERSION = 1 << 16  # a larger (or negative) major/minor/revision is not a header
SEEN_LIMIT = 1 << 63  # darknet's seen is a size_t; beyond int64 it is not a count


def read_header(handle, path):
    """(major, minor, revision, seen, header bytes) with their plausibility checked."""
    shown = printable(path)
    head = handle.read(20)
    if len(head) < 12:
        raise WeightsError(f"{shown}: too short for a .weights header ({len(head)} bytes)")
    major, minor, revision = struct.unpack_from("<iii", head, 0)
    # darknet: major and minor below 1000 (0.1, 0.2), or above 1000 to mark transposed
    # connected weights; exactly 1000 is neither
    if not (
        all(0 <= v < MAX_VERSION and v != 1000 for v in (major, minor))
        and 0 <= revision < MAX_VERSION
    ):
        raise WeightsError(
            f"{shown}: the header's format version {major}.{minor}.{revision} is not one "
            f"darknet writes (0.1.0, 0.2.0, 0.2.5; over 1000 marks transposed weights): "
            f"this is not a .weights file, or its first bytes are damaged"
        )
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        if len(head) < 20:
            raise WeightsError(f"{shown}: header truncated")
        (seen,), offset = struct.unpack_from("<Q", head, 12), 20
    else:
        if len(head) < 16:
            raise WeightsError(f"{shown}: header truncated")
        (seen,), offset = struct.unpack_from("<i", head, 12), 16
    if not 0 <= seen < SEEN_LIMIT:
        raise WeightsError(
            f"{shown}: the header's seen (images trained on) is {seen}, "
            f"outside 0 to 2^63-1: the header is damaged"
        )
    return major, minor, revision, seen, head[:offset]


def load_weights(
    net: Network,
    path: str | os.PathLike,
    allow_nonfinite: bool = False,
    *,
    cutoff: int | None = None,
    quiet: bool = False,
) -> int:
    """Read a darknet .weights file into ``net``; returns the header's seen.

    ``cutoff``: load layers 0..cutoff-1 only (darknet's load_weights_upto).
    Checked before anything is loaded: a regular file (not a FIFO or
    device), a plausible header (version, ``seen`` below 2^63) and a size no
    larger than the cfg needs (a huge file is refused unread). Loaded arrays
    holding NaN or inf are refused, naming the layer and array, unless
    ``allow_nonfinite``: nothing sensible can be evaluated or trained from them.
    A partial load (the file ends at a layer boundary, or holds more than is
    read) is said in one line on stderr unless ``quiet``.
    """
    if net.frozen:  # read-only parameters: thaw, load, freeze again
        with net.thawed():
            return load_weights(net, path, allow_nonfinite, cutoff=cutoff, quiet=quiet)
    path = os.fspath(path)
    shown = printable(path)
    if cutoff is not None and cutoff < 0:
        raise ValueError(f"cutoff must be >= 0, got {cutoff}")
    plan = [(layer, file_arrays(layer)) for layer in _layers(net, "dontload", cutoff)]
    # a new head (dontload) or a cutoff leaves the rest of a larger file unread, as darknet
    rest_unread = (cutoff is not None and cutoff < len(net.layers)) or any(
        layer.dontload and layer.saved for layer in net.layers
    )
    handle, size = open_regular(path, "weights file", None, WeightsError)
    with handle:
        major, minor, _, seen, head = read_header(handle, path)
        needed = len(head) + 4 * sum(count for _, arrays in plan for _, count in arrays)
        if size > needed and not rest_unread:
            last = net.layers[-1]
            raise WeightsError(
                f"{shown}: {size - needed} bytes left after the last layer "
                f"({last.index} [{last.type}]): the file does not fit this cfg (give a "
                f"cutoff, or dontload=1 on layers the file does not hold)"
            )
        data = bytearray(needed)  # read in place: no second copy of a large file
        data[: len(head)] = head
        try:
            handle.seek(len(head))  # a legacy header is 16 bytes, 20 were read
            got = handle.readinto(memoryview(data)[len(head) :])
            data = memoryview(data)[: len(head) + got]
        except OSError as exc:
            raise WeightsError(f"{shown}: cannot read weights file: {exc.strerror}") from None
    offset = len(head)
    transpose = major > 1000 or minor > 1000
    loaded = 0
    for layer, arrays in plan:
        if offset == len(data):  # ends at a layer boundary: darknet's partial output
            break
        for name, count in arrays:
            if offset + 4 * count > len(data):
                have = max(0, (len(data) - offset) // 4)
                raise WeightsError(
                    f"{shown}: file ends inside layer {layer.index} [{layer.type}] '{name}': "
                    f"needs {count} floats, {have} left; the file does not fit this cfg"
                )
            values = np.frombuffer(data, "<f4", count, offset)
            if not allow_nonfinite:
                check_finite(values, layer, name, shown)
            _place(layer, name, values, transpose)
            offset += 4 * count
        loaded += 1
    if plan and not loaded:
        raise WeightsError(f"{shown}: holds a header and no layer's weights")
    net.seen = int(seen)
    log = None if quiet else sys.stderr
    if log is not None and loaded < len(plan):
        last = plan[loaded - 1][0]
        print(
            f"{shown}: loaded the first {loaded} of {len(plan)} layers with weights (up to "
            f"layer {last.index} [{last.type}], where the file ends); the rest keep their "
            f"initial values",
            file=log,
        )
    elif log is not None and size > needed:
        last = plan[-1][0] if plan else None
        where = f"after layer {last.index} [{last.type}]" if last else "after the header"
        print(f"{shown}: {size - needed} bytes {where} not read (cutoff or dontload)", file=log)
    return net.seen


def _place(layer, name, values, transpose):
    """Copy ``values`` (a prefix of the array with numload) into ``layer.<name>``."""
    target = getattr(layer, name)
    if transpose and layer.type == "connected" and name == "weights":
        values = values.reshape(layer.inputs, layer.outputs).T
    if values.size == target.size:
        target[...] = values.reshape(target.shape)
    else:
        target.reshape(-1)[: values.size] = values
    if layer.weights_flipped and name == "weights":  # stored (c*k*k, n): darknet's transpose
        n = layer.out_c
        target[...] = target.reshape(-1, n).T.reshape(target.shape)


def check_finite(values, layer, name, shown):
    """Refuse an array with NaN or inf, naming the layer, the array and how many."""
    bad = ~np.isfinite(values)
    if bad.any():
        first = int(np.argmax(bad))
        raise WeightsError(
            f"{shown}: layer {layer.index} [{layer.type}] '{name}' holds {int(bad.sum())} "
            f"NaN/inf value(s) of {values.size} (first at index {first}: {values[first]}): "
            f"a network cannot be evaluated or trained from them; use an earlier checkpoint"
        )
