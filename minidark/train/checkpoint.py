"""Checkpoints: a darknet ``.weights`` file and its ``.state.npz`` sidecar, as one unit.

The weights file is darknet's format, byte for byte (darknet reads it). The
sidecar ``<file>.state.npz`` holds what that format cannot: every layer's
``*_updates`` momentum buffers (and any arrays a layer lists in
``train_state``), ``t``, both random generators, the epoch's permutation and
the position in it, the loss/accuracy history, the SHA-256 of the exact
weights bytes it belongs to, and a SHA-256 of its own arrays. A sidecar is
only ever used with those weights bytes, and only whole and unedited.

Writing one checkpoint (each step: temporary file, fsync, rename, fsync of
the folder, so every name always holds a whole file)::

    1. sidecar -> <file>.state.npz.next
    2. weights -> <file>
    3. rename <file>.state.npz.next -> <file>.state.npz

Reading: of ``<file>.state.npz`` and ``<file>.state.npz.next``, the one whose
digest matches ``<file>`` is its state. A matching ``.next`` means a crash
between steps 2 and 3: it is renamed into place (step 3 finished). A
``.next`` that matches nothing is from a crash before step 2 and is deleted;
``<file>`` and its old sidecar are then still the previous checkpoint. So
after a kill at any instant every checkpoint name holds either its previous
complete state or its new one, never a mix, and a resume from it is exact.
Temporary files a kill leaves (``.tmp-XXXXXXXX<name>``) are deleted when the
next run starts in that folder; a lock file (``.<base>.lock``) keeps two runs
from writing the same checkpoints at once.
"""

import contextlib
import errno
import hashlib
import io
import json
import math
import os
import re
import stat
import zipfile

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: no lock, the rest works
    fcntl = None

from ..errors import MinidarkError
from ..weights import atomic_write

STATE_VERSION = 2  # 2 adds last_epoch_checkpoint and state_sha256; 1 is still read
READ_VERSIONS = (1, 2)
PENDING = ".next"  # a sidecar waiting for its weights (step 1 done)
NO_EXACT = "--no-exact-resume"  # the CLI flag that resumes from the weights alone

INTEGER_KEYS = ("seen", "t", "dataset_size", "epoch", "position")
TEXT_KEYS = ("weights_sha256", "trainer_rng", "net_rng")
HISTORY_KEYS = (
    "history/iteration",
    "history/loss",
    "history/avg",
    "valid/iteration",
    "valid/top1",
    "valid/topk",
)


class CheckpointError(MinidarkError):
    """A checkpoint that cannot be written, or a sidecar that cannot be used."""


class FolderBusy(CheckpointError):
    """Another live run holds the lock on a base's checkpoints in a folder."""


def sidecar_path(path):
    return os.fspath(path) + ".state.npz"


def pending_path(path):
    return sidecar_path(path) + PENDING


def sha256_of(path):
    """The SHA-256 of a regular file's bytes (anything else is an OSError: a FIFO
    would block the read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        return hashlib.sha256(handle.read()).hexdigest()


def train_state_names(layer):
    """Arrays of ``layer`` that training state needs beyond .weights: ``*_updates``
    (momentum), the recurrent state it carries across batches (``carried``),
    whatever it lists in ``train_state``, and the same of its sublayers as
    ``<sublayer>.<array>``."""
    names = [
        name
        for name, value in vars(layer).items()
        if name.endswith("_updates") and isinstance(value, np.ndarray)
    ]
    names += [name for name in (*layer.carried, *layer.train_state) if name not in names]
    for sub_name, sub in (layer.sublayers or {}).items():
        names += [f"{sub_name}.{name}" for name in train_state_names(sub)]
    return sorted(names)


def state_array(layer, name):
    """The array ``name`` (from train_state_names) of ``layer``."""
    if "." in name:
        sub_name, name = name.split(".", 1)
        return state_array(layer.sublayers[sub_name], name)
    return getattr(layer, name)


# ----------------------------------------------------------------- writing
def state_checksum(arrays):
    """SHA-256 over every array but ``state_sha256`` itself (name, dtype, shape,
    bytes, in name order): a member swapped, dropped or edited changes it."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        if key == "state_sha256":
            continue
        value = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def sidecar_bytes(arrays, weights_data):
    """The sidecar's bytes: ``arrays`` plus the version, the weights digest and
    the checksum of it all."""
    arrays = dict(
        arrays,
        version=np.array(STATE_VERSION),
        weights_sha256=np.array(hashlib.sha256(weights_data).hexdigest()),
    )
    arrays["state_sha256"] = np.array(state_checksum(arrays))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def write_checkpoint(path, weights_data, state_data):
    """Write weights + sidecar as one unit (see the module docstring).

    An OSError (disk full, permissions) raises CheckpointError; whatever
    step failed, ``path`` still holds a complete checkpoint, old or new.
    """
    path = os.fspath(path)
    pending = pending_path(path)
    step = "its training state"
    try:
        atomic_write(pending, state_data)
        step = "the weights"
        atomic_write(path, weights_data)
        step = "the sidecar's final name"
        os.replace(pending, sidecar_path(path))
        _sync_folder(path)
    except BaseException as exc:
        if step == "the weights":  # the new sidecar has no weights: drop it
            _remove(pending)
        if not isinstance(exc, OSError):
            raise
        reason = exc.strerror or str(exc)
        raise CheckpointError(f"cannot write {path} ({step}): {reason}") from None


def _sync_folder(path):
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path):
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


# ----------------------------------------------------------------- reading
def settle_pending(weights_path):
    """Finish or undo an interrupted write of ``weights_path`` (module docstring):
    returns "finished", "removed" or None (nothing pending)."""
    weights_path = os.fspath(weights_path)
    pending = pending_path(weights_path)
    if not os.path.lexists(pending):
        return None
    if os.path.isfile(weights_path) and _recorded_digest(pending) == sha256_of(weights_path):
        os.replace(pending, sidecar_path(weights_path))  # step 3 of the interrupted write
        _sync_folder(weights_path)
        return "finished"
    _remove(pending)  # a crash came before step 2
    return "removed"


def resolve_sidecar(weights_path, base=None):
    """The sidecar that belongs to ``weights_path`` once an interrupted write is
    settled; None when there is none. With ``base``, a pending sidecar is
    settled under that base's folder lock (folder_lock); without, the caller
    holds it."""
    if base is None:
        settle_pending(weights_path)
    elif os.path.lexists(pending_path(weights_path)):
        with folder_lock(os.path.dirname(os.fspath(weights_path)) or ".", base):
            settle_pending(weights_path)
    final = sidecar_path(weights_path)
    return final if os.path.lexists(final) else None


def _regular_size(path):
    """The size of ``path`` if it is a regular file (a FIFO would block a read)."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError("it is not a regular file")
    return info.st_size


def _recorded_digest(path):
    """The weights digest a sidecar records; None if it cannot be read."""
    try:
        _regular_size(path)
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("weights_sha256.npy")
            if info.file_size > 4096:  # 64 hex digits and a header
                return None
            with archive.open(info) as member:
                return str(np.lib.format.read_array(member, allow_pickle=False))
    except Exception:  # unreadable in any way: it cannot be the state of these weights
        return None


def read_sidecar(path, size_limit):
    """The arrays of the sidecar at ``path``, each member's npy header checked
    against its size before anything is allocated. Raises CheckpointError."""
    try:
        arrays = {}
        if _regular_size(path) > size_limit:
            raise CheckpointError(
                f"it has {_regular_size(path)} bytes, more than a sidecar "
                f"of this network can hold ({size_limit})"
            )
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            total = sum(info.file_size for info in infos)
            if total > size_limit:
                raise CheckpointError(
                    f"it claims {total} bytes, more than a sidecar of this "
                    f"network can hold ({size_limit})"
                )
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise CheckpointError(f"member {info.filename!r} is not a numpy array")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, fortran, dtype = read_header(member)
                    expected = math.prod(shape) * dtype.itemsize
                    if dtype.hasobject or expected != info.file_size - member.tell():
                        raise CheckpointError(
                            f"member {info.filename!r} is damaged "
                            f"(its header does not match its size)"
                        )
                    values = np.frombuffer(member.read(expected), dtype)
                    arrays[info.filename[:-4]] = values.reshape(
                        shape, order="F" if fortran else "C"
                    )
        return arrays
    except CheckpointError:
        raise
    except Exception as exc:  # a hostile file can fail anywhere in zipfile/numpy: one line
        raise CheckpointError(
            f"it is not a readable sidecar ({type(exc).__name__}: {exc})"
        ) from None


def check_state(state, net, dataset_size, weights_digest):
    """Everything restore() uses, checked: raises CheckpointError naming the
    first problem; returns the version."""

    def integer(key, low=0, high=2**62):
        value = state.get(key)
        if value is None:
            raise CheckpointError(f"key {key!r} is missing")
        if value.shape != () or value.dtype.kind not in "iu":
            raise CheckpointError(f"key {key!r} is not an integer")
        if not low <= int(value) <= high:
            raise CheckpointError(f"{key}={int(value)} is outside [{low}, {high}]")
        return int(value)

    def text(key):
        value = state.get(key)
        if value is None:
            raise CheckpointError(f"key {key!r} is missing")
        if value.shape != () or value.dtype.kind != "U":
            raise CheckpointError(f"key {key!r} is not text")
        return str(value)

    version = integer("version")
    if version not in READ_VERSIONS:
        raise CheckpointError(
            f"format version {version}; this minidark reads versions "
            f"{', '.join(map(str, READ_VERSIONS))}"
        )
    if version >= 2 and text("state_sha256") != state_checksum(state):
        raise CheckpointError("its contents were changed or damaged (their checksum differs)")
    for key in TEXT_KEYS:
        text(key)
    if text("weights_sha256") != weights_digest:
        raise CheckpointError("it belongs to other weights (their SHA-256 differs)")
    for key in INTEGER_KEYS:
        if key != "position":
            integer(key)
    if integer("seen") != net.seen:
        raise CheckpointError(f"it was saved at seen={integer('seen')}, the weights say {net.seen}")
    if integer("dataset_size") != dataset_size:
        raise CheckpointError(
            f"it was saved for {integer('dataset_size')} training images, "
            f"this data has {dataset_size}"
        )
    integer("position", 0, dataset_size)
    if integer("epoch") != net.seen // dataset_size:
        raise CheckpointError(
            f"epoch={integer('epoch')} does not follow from seen={net.seen} "
            f"and {dataset_size} images"
        )
    if version >= 2:
        integer("last_epoch_checkpoint", 0, net.current_batch)
    order = state.get("order")
    if order is None or order.ndim != 1 or order.dtype.kind not in "iu":
        raise CheckpointError("key 'order' is missing or not a list of image indices")
    if order.size and (
        order.size != dataset_size
        or order.min() < 0
        or order.max() >= dataset_size
        or not (np.bincount(order, minlength=dataset_size) == 1).all()
    ):
        raise CheckpointError(f"'order' is not a permutation of the {dataset_size} images")
    for key in ("trainer_rng", "net_rng"):
        generator = np.random.default_rng(0).bit_generator
        try:
            value = json.loads(text(key))
            if (
                not isinstance(value, dict)
                or value.get("bit_generator") != type(generator).__name__
            ):
                raise ValueError(f"not a {type(generator).__name__} state")
            generator.state = value
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise CheckpointError(f"key {key!r} is not a random generator state ({exc})") from None
    avg = state.get("avg_loss")
    if avg is None or avg.shape != () or avg.dtype.kind != "f" or math.isinf(float(avg)):
        raise CheckpointError("key 'avg_loss' is missing or not a number")
    lengths = {}
    for key in HISTORY_KEYS:
        value = state.get(key)
        if value is None or value.ndim != 1 or value.dtype.kind not in "iuf":
            raise CheckpointError(f"key {key!r} is missing or not a list of numbers")
        lengths.setdefault(key.split("/")[0], set()).add(value.size)
    if any(len(sizes) != 1 for sizes in lengths.values()):
        raise CheckpointError("its history lists have different lengths")
    for layer in net.layers:
        for name in train_state_names(layer):
            key, target = f"layer{layer.index}/{name}", state_array(layer, name)
            value = state.get(key)
            if value is None:
                raise CheckpointError(
                    f"it has no {key} (layer {layer.index} [{layer.type}] {name})"
                )
            if value.shape != target.shape or value.dtype.kind != "f":
                raise CheckpointError(
                    f"{key} has shape {value.shape} {value.dtype}, layer "
                    f"{layer.index} [{layer.type}] needs {target.shape}"
                )
            if not np.isfinite(value).all():
                raise CheckpointError(f"{key} holds NaN or infinite values")
    return version


def size_limit(net, dataset_size):
    """An upper bound on an honest sidecar's size (momentum, order, history)."""
    floats = sum(
        state_array(layer, name).size for layer in net.layers for name in train_state_names(layer)
    )
    return 2 * 8 * floats + 16 * dataset_size + 48 * max(net.current_batch, 1) + (1 << 20)


def unusable(path, problem, folder=None, base=None, exclude=None):
    """The one-line error for a sidecar that cannot be used, saying what to do."""
    earlier = ""
    if folder is not None and base is not None:
        others = [
            p
            for p in complete_checkpoints(folder, base)
            if not exclude or os.path.abspath(p) != os.path.abspath(exclude)
        ]
        if others:
            earlier = f" (the newest other complete one is {others[-1]})"
    return CheckpointError(
        f"{path}: cannot resume exactly: {problem}. Pass {NO_EXACT} to train on from the "
        f"weights alone (momentum and data order start fresh), or resume from an earlier "
        f"checkpoint{earlier}"
    )


# ------------------------------------------------------- a folder's checkpoints
def checkpoint_names(base):
    """A regex for the file names a run of ``base`` writes (checkpoints and sidecars)."""
    stem = re.escape(base)
    return re.compile(rf"{stem}(\.backup|\.weights|_\d+\.weights)(\.state\.npz(\.next)?)?")


def complete_checkpoints(folder, base):
    """Checkpoints of ``base`` in ``folder`` with a matching sidecar, oldest first
    (by the seen count in their header; at equal counts epoch files, then
    .backup, then the finished .weights)."""
    pattern, found = checkpoint_names(base), []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for name in names:
        match = pattern.fullmatch(name)
        if not match or match.group(2):
            continue
        path = os.path.join(folder, name)
        try:
            digest = sha256_of(path)
            with open(path, "rb") as handle:  # a regular file: sha256_of said so
                header = handle.read(20)
        except OSError:
            continue
        if len(header) == 20 and any(
            _recorded_digest(p) == digest for p in (sidecar_path(path), pending_path(path))
        ):
            rank = 2 if name == f"{base}.weights" else 1 if name.endswith(".backup") else 0
            found.append((int.from_bytes(header[12:20], "little"), rank, path))
    return [path for _, _, path in sorted(found)]


def newest_checkpoint(folder, base):
    """The newest complete checkpoint of ``base`` in ``folder`` (None if none):
    the one to resume from after a crash."""
    complete = complete_checkpoints(folder, base)
    return complete[-1] if complete else None


TEMPORARY = re.compile(r"\.tmp-[A-Za-z0-9_]{8}(?P<name>.+)")


def clean_folder(folder, base):
    """Delete what interrupted writes of ``base``'s files left in ``folder`` and
    settle pending sidecars; returns the names removed."""
    pattern, removed = checkpoint_names(base), []
    for name in sorted(os.listdir(folder)):
        temporary = TEMPORARY.fullmatch(name)
        if temporary and (
            pattern.fullmatch(temporary.group("name"))
            or temporary.group("name") == f"{base}_chart.png"
        ):
            if _remove(os.path.join(folder, name)):
                removed.append(name)
            continue
        match = pattern.fullmatch(name)
        if match and match.group(3):  # <file>.state.npz.next
            weights = os.path.join(folder, name[: -len(".state.npz" + PENDING)])
            if settle_pending(weights) == "removed":
                removed.append(name)
    return removed


def lock_folder(folder, base):
    """Hold ``folder/.<base>.lock`` so no second run writes ``base``'s files there;
    returns the descriptor for unlock_folder. Raises CheckpointError."""
    path = os.path.join(folder, f".{base}.lock")
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        raise CheckpointError(
            f"cannot write in the backup folder {folder}: {exc.strerror} ({path})"
        ) from None
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise FolderBusy(
                f"another run is writing {base}'s checkpoints in {folder} "
                f"(it holds {path}): wait for it to end, or set backup= "
                f"to another folder"
            ) from None
    return fd


def unlock_folder(fd):
    if fd is not None:
        os.close(fd)  # closing releases the lock; the file stays for the next run


@contextlib.contextmanager
def folder_lock(folder, base):
    """Hold the lock of ``base`` in ``folder`` while settling a checkpoint there, so
    a live run's pending sidecar is never taken for a stale one. FolderBusy if a
    live run holds it; a folder where no lock file can be made (read-only: no
    run writes there) is read without one."""
    try:
        fd = lock_folder(folder, base)
    except FolderBusy:
        raise
    except CheckpointError:
        fd = None
    try:
        yield
    finally:
        unlock_folder(fd)


def checkpoint_base(path, default):
    """The ``<base>`` of a checkpoint file name (``<base>.backup``,
    ``<base>_<epoch>.weights``, ``<base>.weights``), else ``default``."""
    named = re.fullmatch(r"(.+?)(\.backup|\.weights|_\d+\.weights)", os.path.basename(path))
    return named.group(1) if named else default
