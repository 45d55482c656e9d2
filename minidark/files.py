"""Reading the files a user names: refuse what is not a regular file, or is too
big, before reading a byte.

Every file minidark reads because a user named it (weights, ``.data``,
names/labels, tree, image lists, images, IDX) goes through
:func:`open_regular` (or :func:`read_bytes` / :func:`read_text`); cfg files
get the same check in ``cfg/grammar.py``. A FIFO would block the reader
forever, ``/dev/zero`` never ends, a directory fails with a bare
IsADirectoryError, and a 40 GB file given by mistake would be read into
memory: each is refused with one line naming the file and what it is. The
file is opened without blocking (``O_NONBLOCK``: a FIFO opens at once, with
no writer) and checked with ``fstat`` on the open descriptor, so nothing can
be swapped in between the check and the read.

A reader of a new kind of file calls them the same way (kernels/tree.py
does, raising the cfg's error)::

    from minidark.files import TEXT_LIMIT, read_text
    text = read_text(path, "tree file", TEXT_LIMIT, ConfigError)

``error`` is the exception class raised (or any callable returning an
exception), called with the message alone; messages start with the path,
its control characters escaped.
"""

import os
import stat

from .errors import MinidarkError, printable

MiB = 1 << 20
TEXT_LIMIT = 64 * MiB  # cfg, .data, names, labels, tree: darknet's largest are < 1 MiB
LIST_LIMIT = 1024 * MiB  # image lists: ~10 million paths
IDX_LIMIT = 4096 * MiB  # an IDX file's content, decompressed (MNIST's largest: 45 MiB)

KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def size_text(count):
    """'3.2 GiB' for a byte count."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024


def open_regular(path, what, limit=None, error=MinidarkError):
    """``(binary file object, size)`` of ``path``, checked before any read.

    Refuses (``error(message)``) a path that cannot be opened, anything that
    is not a regular file, and a file larger than ``limit`` bytes (None: no
    limit). ``what`` names the file in messages ("weights file").
    """
    path = os.fspath(path)
    shown = printable(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"{shown}: cannot read {what}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        for test, kind in KINDS:
            if test(info.st_mode):
                raise error(f"{shown}: {what} is {kind}, not a regular file")
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{shown}: {what} is not a regular file")
        if limit is not None and info.st_size > limit:
            raise error(
                f"{shown}: {what} is {size_text(info.st_size)}, more than the "
                f"{size_text(limit)} a {what} can be: is it the right file?"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), info.st_size
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path, what, limit=None, error=MinidarkError):
    """The whole content of a regular file of at most ``limit`` bytes."""
    handle, _ = open_regular(path, what, limit, error)
    with handle:
        try:
            return handle.read()
        except OSError as exc:
            raise error(f"{printable(path)}: cannot read {what}: {exc.strerror}") from None


def read_text(path, what, limit=TEXT_LIMIT, error=MinidarkError):
    """A UTF-8 text file (a leading byte-order mark is dropped) as str."""
    data = read_bytes(path, what, limit, error)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(
            f"{printable(path)}: {what} is not UTF-8 text (byte {exc.start} is "
            f"0x{data[exc.start]:02x})"
        ) from None
