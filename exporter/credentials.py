"""Turns an account's auth config into signing credentials, re-reading secret files on change.

Kubernetes rotates a mounted secret by swapping a symlink, so a file's identity (inode,
size, mtime) changes while its path stays: a stat per request is enough to notice, and the
file is read only when it did change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import AccountConfig, AppAuth, SecretRef, file_identity, read_secret_file
from .model import FetchError, Reason
from .signing import AppCredentials, Credentials, TokenCredentials


@dataclass(frozen=True, slots=True)
class _Cached:
    identity: tuple[int, int, int, int]
    value: str


class CredentialStore:
    """Resolves credentials per request; one instance per running exporter (no globals)."""

    def __init__(self) -> None:
        self._files: dict[Path, _Cached] = {}

    def credentials(self, account: AccountConfig) -> Credentials:
        """Raises FetchError(reason=auth) when a secret file became unreadable or empty."""
        auth = account.auth
        if isinstance(auth, AppAuth):
            return AppCredentials(app_id=auth.app_id, app_secret=self._secret(auth.secret))
        return TokenCredentials(token=self._secret(auth.token))

    def refresh(self, account: AccountConfig) -> bool:
        """Re-read the account's secret file even if it looks unchanged; True if it changed.

        Called after an auth failure: a rotated secret may have been written in place
        within the file system's timestamp granularity, which the stat check cannot see.
        """
        auth = account.auth
        ref = auth.secret if isinstance(auth, AppAuth) else auth.token
        if ref.path is None:
            return False
        before = self._files.pop(ref.path, None)
        try:
            after = self._secret(ref)
        except FetchError:
            return False
        return before is None or before.value != after

    def _secret(self, ref: SecretRef) -> str:
        if ref.value is not None:
            return ref.value.reveal()
        assert ref.path is not None
        try:
            identity = file_identity(ref.path)
            cached = self._files.get(ref.path)
            if cached is not None and cached.identity == identity:
                return cached.value
            value = read_secret_file(ref.path)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise FetchError(Reason.AUTH, f"cannot read {ref.key} {ref.path}: {reason}") from None
        if not value:
            raise FetchError(Reason.AUTH, f"{ref.key} {ref.path} is empty")
        self._files[ref.path] = _Cached(identity=identity, value=value)
        return value
