"""Which replica polls which account: rendezvous (highest-random-weight) hashing.

Every replica computes the same owner for an account from its name alone, with no
coordination, and changing the replica count from N to N+1 moves only about 1/(N+1) of
the accounts, so a scale-out does not reset every replica's state.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from .settings import AccountConfig

_ORDINAL = re.compile(r"-(\d+)$")


def owner(name: str, count: int) -> int:
    """The shard index, in [0, count), that owns account `name`."""
    return max(range(count), key=lambda index: _weight(name, index))


def _weight(name: str, index: int) -> int:
    digest = hashlib.blake2b(f"{index}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owned(accounts: Iterable[AccountConfig], count: int, index: int) -> tuple[AccountConfig, ...]:
    if count == 1:
        return tuple(accounts)
    return tuple(account for account in accounts if owner(account.name, count) == index)


def resolve_index(value: str, count: int, hostname: str) -> int:
    """`--shard.index`: a number, or `auto` for a StatefulSet pod's ordinal (name-N)."""
    if value == "auto":
        match = _ORDINAL.search(hostname)
        if match is None:
            raise ValueError(
                f"--shard.index=auto needs a StatefulSet pod name ending in -N, got {hostname!r}"
            )
        index = int(match.group(1))
    elif value.isdigit():
        index = int(value)
    else:
        raise ValueError(f"--shard.index must be a number or auto, got {value!r}")
    if not 0 <= index < count:
        raise ValueError(f"--shard.index {index} is outside 0..{count - 1} (--shard.count {count})")
    return index
