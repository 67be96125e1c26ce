"""Reading a file whose path someone else chose, bounded in size and never blocking: the
config, secret files, CA bundles, the web config's files, the build record. Its own module
so that the web, credential, config and build code share it without importing each other.
"""

from __future__ import annotations

import errno
import os
import re
import ssl
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .schema import Invalid, cut

_T = TypeVar("_T")
# Tokens and app secrets are a few hundred bytes at most.
SECRET_FILE_LIMIT = 64 * 1024
# A full public CA bundle (Mozilla's, as shipped by certifi) is about 300 KB.
CA_FILE_LIMIT = 1024 * 1024
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN ((?:TRUSTED |X509 )?CERTIFICATE)-----\r?\n.*?-----END \1-----", re.DOTALL
)


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


def read_secret_file(path: Path) -> str:
    """Read a secret file, through read_regular_file, so a FIFO or device cannot hang a poll."""
    return secret_text(read_regular_file(path, SECRET_FILE_LIMIT))


def secret_text(content: bytes) -> str:
    """A secret file's content as text, without the trailing newline editors and `echo` add."""
    return content.decode("utf-8").rstrip("\r\n")


def pem_certificates(data: bytes) -> str:
    """The PEM certificates in a CA bundle, for `cadata=`; ValueError if there are none.

    Only the certificate blocks are kept: bundles such as certifi's carry comments in UTF-8
    between them, which `cadata=` (ASCII only) would refuse.
    """
    blocks = [match.group(0) for match in _PEM_CERTIFICATE.finditer(data)]
    if not blocks:
        raise ValueError("no PEM certificate in it")
    try:
        return b"\n".join(blocks).decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("a certificate block holds non-ASCII bytes") from None


def load_ca_context(path: Path) -> ssl.SSLContext:
    """A client context trusting the CA bundle at `path`, read safely (see read_regular_file).

    OpenSSL given the path itself would block on a FIFO; given the bytes it cannot.
    """
    return ca_context(read_regular_file(path, CA_FILE_LIMIT))


def ca_context(bundle: bytes) -> ssl.SSLContext:
    """A verifying client context trusting exactly the PEM certificates in `bundle`."""
    return ssl.create_default_context(cadata=pem_certificates(bundle))


def read_or_refuse(file: Path, reader: Callable[[Path], _T], shown: str) -> _T:
    """What `reader` makes of a file named in a config; failures as Invalid naming the file
    (as `shown`), never showing its content."""
    try:
        return reader(file)
    except FileNotFoundError:
        raise Invalid(f"no such file: {shown}") from None
    except OSError as exc:
        raise Invalid(f"cannot read {shown}: {os_reason(exc)}") from None
    except UnicodeDecodeError:
        raise Invalid(f"cannot read {shown}: not UTF-8 text") from None
    except (ValueError, ssl.SSLError) as exc:
        reason = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else str(exc)
        raise Invalid(f"not a PEM CA bundle: {shown} ({cut(str(reason))})") from None


def show_path(file: Path) -> str:
    """A file name from the config as an error message may quote it."""
    return cut(str(file), 200)


def os_reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
