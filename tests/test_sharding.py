"""Rendezvous hashing: deterministic, balanced, and minimal movement when N changes."""

from __future__ import annotations

from collections import Counter

import pytest

from exporter.core.settings import AccountConfig, Secret, SecretRef, TokenAuth
from exporter.core.sharding import owned, owner, resolve_index

NAMES = [f"tenant-{i:05d}" for i in range(6000)]


def test_owner_is_deterministic_and_balanced() -> None:
    assert [owner(n, 4) for n in NAMES[:50]] == [owner(n, 4) for n in NAMES[:50]]
    counts = Counter(owner(name, 4) for name in NAMES)
    assert set(counts) == {0, 1, 2, 3}
    assert all(abs(count - 1500) < 150 for count in counts.values()), counts


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_growing_by_one_moves_about_one_share(count: int) -> None:
    moved = sum(owner(name, count) != owner(name, count + 1) for name in NAMES)
    share = len(NAMES) / (count + 1)
    assert abs(moved - share) < 0.1 * len(NAMES) / (count + 1) + 60
    # and every account that moved went to the new replica
    assert all(
        owner(name, count + 1) == count
        for name in NAMES
        if owner(name, count) != owner(name, count + 1)
    )


def test_shards_cover_every_account_exactly_once() -> None:
    token = TokenAuth(SecretRef("token", value=Secret("t")))
    accounts = [AccountConfig(name=n, user_id=n, auth=token) for n in NAMES[:1000]]
    shards = [owned(accounts, 3, index) for index in range(3)]
    names = [account.name for shard in shards for account in shard]
    assert sorted(names) == sorted(a.name for a in accounts)
    assert owned(accounts, 1, 0) == tuple(accounts)


@pytest.mark.parametrize(
    ("value", "count", "hostname", "index"),
    [("0", 1, "x", 0), ("2", 3, "x", 2), ("auto", 3, "koodrive-exporter-1", 1),
     ("auto", 12, "kx-koodrive-exporter-11", 11)],
)  # fmt: skip
def test_resolve_index(value: str, count: int, hostname: str, index: int) -> None:
    assert resolve_index(value, count, hostname) == index


@pytest.mark.parametrize(
    ("value", "count", "hostname", "message"),
    [("3", 3, "x", "outside 0..2"), ("auto", 3, "exporter", "ending in -N"),
     ("auto", 2, "exporter-5", "outside 0..1"), ("one", 2, "x", "number or auto")],
)  # fmt: skip
def test_resolve_index_errors(value: str, count: int, hostname: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_index(value, count, hostname)
