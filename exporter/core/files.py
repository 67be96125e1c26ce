"""Reading a file whose path someone else chose, bounded in size and never blocking: the
config, secret files, CA bundles, the web config's files, the build record. Its own module
so that the web, credential, config and build code share it without importing each other.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


def file_identity(path: Path) -> tuple[int, int, int, int]:
    """What changes when a file is replaced (Kubernetes swaps a symlink) or rewritten."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def read_regular_file(path: Path, limit: int) -> bytes:
    """The content of a regular file of at most `limit` bytes; OSError for anything else.

    Opening a FIFO blocks until a writer comes and /dev/zero never ends, so a config check or
    a reload would hang or run out of memory. O_NONBLOCK makes open() return at once, fstat()
    then tells what the descriptor is, and at most limit + 1 bytes are read in case the file
    grows meanwhile. Symlinks are followed: Kubernetes mounts secrets through them. The
    errors are OSErrors whose strerror says what is wrong, so callers that already report
    OSError (the credential store) need no change.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except ValueError:
        raise OSError(errno.EINVAL, "the file name contains a NUL byte", str(path)) from None
    except OSError as exc:
        # open() of a Unix socket fails with ENXIO, whose text ("No such device or address")
        # would send the operator looking in the wrong place.
        if exc.errno == errno.ENXIO and _is_socket(path):
            raise OSError(errno.ENXIO, "is a socket, not a regular file", str(path)) from None
        raise
    try:
        info = os.fstat(fd)
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a regular file", str(path))
        if not stat.S_ISREG(mode):
            kind = _file_kind(mode)
            raise OSError(errno.EINVAL, f"is {kind}, not a regular file", str(path))
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"is larger than {size_text(limit)}", str(path))
        chunks: list[bytes] = []
        remaining = limit + 1
        while remaining > 0:  # each pass reads at least one byte or stops
            chunk = os.read(fd, min(remaining, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        if remaining <= 0:
            raise OSError(errno.EFBIG, f"is larger than {size_text(limit)}", str(path))
        return b"".join(chunks)
    finally:
        os.close(fd)


def size_text(limit: int) -> str:
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if limit >= size and limit % size == 0:
            return f"{limit // size} {unit}"
    return f"{limit} bytes"


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a plain file")


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False
