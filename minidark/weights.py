"""darknet's .weights format, read and written (parser.c save/load_weights).

Header (little-endian): int32 major, int32 minor, int32 revision, then
``seen`` as uint64 when ``major*10 + minor >= 2`` (and both < 1000), else as
int32 (16-byte legacy header). Files with major or minor > 1000 store
connected weights transposed. Then, per layer in order, the float32 arrays
its ``saved`` tuple names, e.g. connected: biases, weights, [scales,
rolling_mean, rolling_variance]; convolutional: biases, [scales,
rolling_mean, rolling_variance], weights. Layers without parameters write
nothing.

Deliberate fixes: a short file, or one with bytes left over, is an error
naming the layer (darknet silently keeps random weights); saving writes a
temporary file, fsyncs and renames, so a crash never leaves a torn file.
"""
import os
import struct
import tempfile

import numpy as np

from .errors import WeightsError

MAJOR, MINOR, REVISION = 0, 2, 0


def _layers(net, skip_flag):
    for layer in net.layers:
        if layer.saved and not getattr(layer, skip_flag):
            yield layer


def weights_bytes(net):
    """The bytes of a .weights file for ``net`` (header + parameters)."""
    parts = [struct.pack("<iiiQ", MAJOR, MINOR, REVISION, int(net.seen))]
    for layer in _layers(net, "dontsave"):
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
            while view:                # os.write may write less than asked
                view = view[os.write(fd, view):]
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


def save_weights(net, path):
    """Write ``net``'s parameters as a darknet .weights file, atomically."""
    atomic_write(path, weights_bytes(net))


def load_weights(net, path):
    """Read a darknet .weights file into ``net``; returns the header's seen."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read weights file: {exc.strerror}") from None
    if len(data) < 12:
        raise WeightsError(f"{path}: too short for a .weights header ({len(data)} bytes)")
    major, minor, revision = struct.unpack_from("<iii", data, 0)
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        if len(data) < 20:
            raise WeightsError(f"{path}: header truncated")
        (seen,), offset = struct.unpack_from("<Q", data, 12), 20
    else:
        if len(data) < 16:
            raise WeightsError(f"{path}: header truncated")
        (seen,), offset = struct.unpack_from("<i", data, 12), 16
    transpose = major > 1000 or minor > 1000
    for layer in _layers(net, "dontload"):
        for name in layer.saved:
            target = getattr(layer, name)
            count = target.size
            if offset + 4 * count > len(data):
                have = max(0, (len(data) - offset) // 4)
                raise WeightsError(
                    f"{path}: file ends inside layer {layer.index} [{layer.type}] '{name}': "
                    f"needs {count} floats, {have} left; the file does not fit this cfg")
            values = np.frombuffer(data, "<f4", count, offset)
            if transpose and layer.type == "connected" and name == "weights":
                values = values.reshape(layer.inputs, layer.outputs).T
            target[...] = values.reshape(target.shape)
            offset += 4 * count
    if offset != len(data):
        raise WeightsError(f"{path}: {len(data) - offset} bytes left after the last layer "
                           f"({net.layers[-1].index} [{net.layers[-1].type}]): "
                           f"the file does not fit this cfg")
    net.seen = int(seen)
    return net.seen
