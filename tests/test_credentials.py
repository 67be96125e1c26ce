"""Secret files: re-read on change, forced re-read after an auth failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from exporter.core.model import FetchError, Reason
from exporter.core.settings import AccountConfig, AppAuth, Secret, SecretRef, TokenAuth
from exporter.upstream.credentials import CredentialStore
from exporter.upstream.signing import AppCredentials, TokenCredentials


def token_account(path: Path) -> AccountConfig:
    return AccountConfig(name="a", user_id="1", auth=TokenAuth(SecretRef("token_file", path=path)))


def test_inline_secrets_are_used_as_is() -> None:
    account = AccountConfig(
        name="a",
        user_id="1",
        auth=AppAuth(app_id="id", secret=SecretRef("app_secret", value=Secret("s3"))),
    )
    store = CredentialStore()
    assert store.credentials(account) == AppCredentials(app_id="id", app_secret="s3")
    assert not store.refresh(account)


def test_file_is_reread_when_replaced_like_a_kubernetes_secret(tmp_path: Path) -> None:
    data = tmp_path / "..data_1"
    data.mkdir()
    (data / "token").write_text("old\n")
    link = tmp_path / "..data"
    link.symlink_to(data)
    token = tmp_path / "token"
    token.symlink_to(link / "token")
    store = CredentialStore()
    account = token_account(token)
    assert store.credentials(account) == TokenCredentials("old")

    fresh = tmp_path / "..data_2"
    fresh.mkdir()
    (fresh / "token").write_text("new\n")
    tmp_link = tmp_path / "..data_tmp"
    tmp_link.symlink_to(fresh)
    tmp_link.replace(link)  # the atomic swap kubelet does
    assert store.credentials(account) == TokenCredentials("new")


def test_refresh_sees_a_rewrite_the_stat_check_cannot(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("aaaa\n")
    store = CredentialStore()
    account = token_account(token)
    assert store.credentials(account) == TokenCredentials("aaaa")
    stat = token.stat()
    token.write_text("bbbb\n")  # same size, and the old mtime restored below
    os.utime(token, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert store.credentials(account) == TokenCredentials("aaaa")  # looks unchanged
    assert store.refresh(account)
    assert store.credentials(account) == TokenCredentials("bbbb")
    assert not store.refresh(account)


def test_unreadable_or_empty_file_is_an_auth_error_without_the_secret(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("secret-value\n")
    store = CredentialStore()
    account = token_account(token)
    store.credentials(account)
    token.write_text("\n")
    with pytest.raises(FetchError) as info:
        store.credentials(account)
    assert info.value.reason is Reason.AUTH
    assert "empty" in info.value.detail
    token.unlink()
    with pytest.raises(FetchError) as info:
        store.credentials(account)
    assert info.value.reason is Reason.AUTH
    assert "No such file" in info.value.detail
    assert "secret-value" not in info.value.detail
