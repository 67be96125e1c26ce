"""Entry point: signal handlers first, then the heavy imports, then the CLI."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .signals import Signals


def main(argv: Sequence[str] | None = None) -> int:
    signals = Signals().install()
    # Imported after the handlers: aiohttp and friends take a few hundred milliseconds to
    # import, during which a SIGTERM must not kill the process.
    try:
        from .cli import run

        return run(argv, signals)
    finally:
        signals.ignore_from_now()


if __name__ == "__main__":
    sys.exit(main())
