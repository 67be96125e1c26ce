"""The files an account needs at run time: secret files and its ca_file, re-read on change.

Kubernetes rotates a mounted secret by swapping a symlink, so a file's identity (device,
inode, size, mtime) changes while its path stays: a stat is enough to notice, and the file
is read only when it did change.

These paths come from an operator's config but point into a file system anything may have
written to, so every read refuses what is not a regular file (a FIFO would block forever,
/dev/zero never ends) and anything larger than a secret or a CA bundle can be. Polls go
through the async methods (the client calls them for the poller), which stat and read in a
worker thread, and at most once per RESTAT_INTERVAL per file: a stuck NFS mount must not
stall every account on the loop. The synchronous `credentials` and `refresh` serve the
simulator and the tests, where that matters less than simplicity.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from ..core.files import (
    CA_FILE_LIMIT,
    SECRET_FILE_LIMIT,
    ca_context,
    file_identity,
    read_regular_file,
    secret_text,
)
from ..core.model import FetchError, Reason
from ..core.settings import AccountConfig, AppAuth, SecretRef
from .signing import AppCredentials, Credentials, TokenCredentials

# How stale a file's stat may be before the async path looks again: a rotation is picked
# up within a second, and an account polled every 10 ms still costs one stat a second.
RESTAT_INTERVAL = 1.0

Identity = tuple[int, int, int, int]
T = TypeVar("T")


@dataclass(slots=True)
class _Cached(Generic[T]):
    identity: Identity
    value: T = field(repr=False)
    checked_at: float


def _load(
    path: Path, limit: int, parse: Callable[[bytes], T], known: Identity | None
) -> tuple[Identity, T] | None:
    """None if the file still has identity `known`; else its new identity and parsed value.

    Blocking: run it in a worker thread from the loop. Touches no shared state, so two
    threads loading one file at once are harmless. The identity is taken before the read:
    a file replaced in between is simply read again at the next check.
    """
    identity = file_identity(path)
    if identity == known:
        return None
    return identity, parse(read_regular_file(path, limit))


def _parse_secret(content: bytes) -> str:
    """The secret as the config check reads it; refuse what no header can carry."""
    text = secret_text(content)
    if not text.isprintable():
        raise ValueError("contains control characters")
    return text


def _secret_path(account: AccountConfig) -> Path | None:
    """The account's secret file, if its secret lives in one rather than in the config."""
    auth = account.auth
    return (auth.secret if isinstance(auth, AppAuth) else auth.token).path


def _reason(exc: Exception) -> str:
    """Why a file cannot be used, in words that never include its content."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not {exc.encoding} text"
    if isinstance(exc, ValueError):
        return str(exc)
    if isinstance(exc, ssl.SSLError):  # before OSError, which it subclasses
        return f"not a PEM CA bundle ({exc.reason or type(exc).__name__})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__


class CredentialStore:
    """Resolves credentials and CA contexts per request; one instance per exporter."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._secrets: dict[Path, _Cached[str]] = {}
        self._contexts: dict[Path, _Cached[ssl.SSLContext]] = {}

    def credentials(self, account: AccountConfig) -> Credentials:
        """Blocking; stats on every call. Raises FetchError(reason=auth) when a secret file
        became unreadable, empty, oversized or not a regular file."""
        auth = account.auth
        if isinstance(auth, AppAuth):
            return AppCredentials(app_id=auth.app_id, app_secret=self._secret_now(auth.secret))
        return TokenCredentials(token=self._secret_now(auth.token))

    async def resolve(self, account: AccountConfig) -> Credentials:
        """`credentials` for the event loop: file access in a thread, at most once a second."""
        auth = account.auth
        if isinstance(auth, AppAuth):
            secret = await self._secret_async(auth.secret)
            return AppCredentials(app_id=auth.app_id, app_secret=secret)
        return TokenCredentials(token=await self._secret_async(auth.token))

    def refresh(self, account: AccountConfig) -> bool:
        """Re-read the account's secret file even if it looks unchanged; True if it changed.

        Called after an auth failure: a rotated secret may have been written in place
        within the file system's timestamp granularity, which the stat check cannot see.
        """
        path = _secret_path(account)
        if path is None:
            return False
        before = self._secrets.pop(path, None)
        try:
            after = self.credentials(account)
        except FetchError:
            return False
        return before is None or before.value != _secret_of(after)

    async def refresh_async(self, account: AccountConfig) -> bool:
        """`refresh` for the event loop: the forced read runs in a worker thread."""
        path = _secret_path(account)
        if path is None:
            return False
        before = self._secrets.pop(path, None)
        try:
            after = await self.resolve(account)
        except FetchError:
            return False
        return before is None or before.value != _secret_of(after)

    async def tls(self, account: AccountConfig) -> ssl.SSLContext | bool:
        """Verification always on (system CAs, or the account's ca_file) unless disabled.

        The ca_file is re-read when it changes, so a rotated upstream CA needs no restart;
        FetchError(reason=tls) when it became unreadable or is not a PEM bundle.
        """
        if account.insecure_skip_verify:
            return False
        if account.ca_file is None:
            return True
        try:
            return await self._cached_async(
                self._contexts, account.ca_file, CA_FILE_LIMIT, ca_context
            )
        except (OSError, ValueError, ssl.SSLError) as exc:
            detail = f"cannot use ca_file {account.ca_file}: {_reason(exc)}"
            raise FetchError(Reason.TLS, detail) from None

    def forget(self, gone: Iterable[AccountConfig], keep: Iterable[AccountConfig]) -> None:
        """Drop what was read for `gone` accounts, except files the `keep` accounts use.

        A removed account's secret must not stay in memory until the next restart, and a
        changed account's files are read afresh.
        """
        used = {p for a in keep for p in (_secret_path(a), a.ca_file) if p is not None}
        for account in gone:
            path = _secret_path(account)
            if path is not None and path not in used:
                self._secrets.pop(path, None)
            if account.ca_file is not None and account.ca_file not in used:
                self._contexts.pop(account.ca_file, None)

    def _secret_now(self, ref: SecretRef) -> str:
        if ref.value is not None:
            return ref.value.reveal()
        assert ref.path is not None
        cached = self._secrets.get(ref.path)
        try:
            loaded = _load(ref.path, SECRET_FILE_LIMIT, _parse_secret, cached and cached.identity)
        except (OSError, ValueError) as exc:
            raise self._unreadable(ref, ref.path, exc) from None
        if loaded is not None:
            cached = self._secrets[ref.path] = _Cached(*loaded, checked_at=self._clock())
        assert cached is not None
        return self._nonempty(ref, ref.path, cached.value)

    async def _secret_async(self, ref: SecretRef) -> str:
        if ref.value is not None:
            return ref.value.reveal()
        assert ref.path is not None
        try:
            value = await self._cached_async(
                self._secrets, ref.path, SECRET_FILE_LIMIT, _parse_secret
            )
        except (OSError, ValueError) as exc:
            raise self._unreadable(ref, ref.path, exc) from None
        return self._nonempty(ref, ref.path, value)

    async def _cached_async(
        self,
        cache: dict[Path, _Cached[T]],
        path: Path,
        limit: int,
        parse: Callable[[bytes], T],
    ) -> T:
        cached = cache.get(path)
        now = self._clock()
        if cached is not None and now - cached.checked_at < RESTAT_INTERVAL:
            return cached.value
        try:
            loaded = await asyncio.to_thread(_load, path, limit, parse, cached and cached.identity)
        except Exception:
            cache.pop(path, None)  # what can no longer be read is no longer trusted
            raise
        if loaded is None:
            assert cached is not None
            cached.checked_at = now
            return cached.value
        cache[path] = _Cached(identity=loaded[0], value=loaded[1], checked_at=now)
        return loaded[1]

    def _nonempty(self, ref: SecretRef, path: Path, value: str) -> str:
        if not value:
            self._secrets.pop(path, None)
            raise FetchError(Reason.AUTH, f"{ref.key} {path} is empty")
        return value

    def _unreadable(self, ref: SecretRef, path: Path, exc: Exception) -> FetchError:
        """The error names the key, the path and why; never any of the content."""
        self._secrets.pop(path, None)
        return FetchError(Reason.AUTH, f"cannot read {ref.key} {path}: {_reason(exc)}")


def _secret_of(credentials: Credentials) -> str:
    if isinstance(credentials, AppCredentials):
        return credentials.app_secret
    return credentials.token
