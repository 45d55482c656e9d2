"""The run's text outputs in the backup folder: ``<base>.log`` and ``<base>_metrics.jsonl``.

Both are appended to, and only ever as regular files: opening does not
follow a symbolic link (``O_NOFOLLOW``) and refuses anything that is not a
plain file (a FIFO would block, a device would swallow the log), so a link
planted in a shared backup folder cannot make training append to another
file. A failed write (disk full) becomes a ``TrainingStopped`` naming the file.
"""

import contextlib
import json
import os
import stat

from ..errors import MinidarkError


class TrainingStopped(MinidarkError):
    """Training cannot go on (a NaN loss, a checkpoint or log that cannot be written)."""


def check_appendable(path):
    """Refuse ``path`` now, before training, if open_append would refuse it later."""
    if os.path.islink(path):
        raise TrainingStopped(
            f"{path} is a symbolic link: refusing to append to it (remove the link)"
        )
    if os.path.lexists(path) and not os.path.isfile(path):
        raise TrainingStopped(f"{path} is not a regular file: refusing to append to it (remove it)")


def open_append(path):
    """``path`` opened for appending text, refusing links and non-regular files."""
    flags = (
        os.O_RDWR  # read too: a line a killed run left unfinished is seen and ended
        | os.O_APPEND
        | os.O_CREAT
        | os.O_NONBLOCK
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_CLOEXEC", 0)
    )
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        check_appendable(path)
        raise TrainingStopped(f"cannot open {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TrainingStopped(
                f"{path} is not a regular file: refusing to append to it (remove it)"
            )
        os.set_blocking(fd, True)
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")
        return os.fdopen(fd, "a", encoding="utf-8", buffering=1)
    except BaseException:
        os.close(fd)
        raise


class Log:
    """Line-buffered appends to one file; a failed write stops training."""

    def __init__(self, path):
        self.path = path
        self.handle = open_append(path)

    def write(self, text):
        try:
            self.handle.write(text)
        except OSError as exc:
            raise TrainingStopped(f"cannot write {self.path}: {exc.strerror}") from None

    def close(self):
        with contextlib.suppress(OSError):  # a failed write already said so
            self.handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def append_record(path, record):
    """Append ``record`` as one JSON line to ``path``."""
    with Log(path) as log:
        log.write(json.dumps(record) + "\n")
