"""Demo mode: the built-in simulator and an exporter polling it, in one process.

Credentials are random per run and live only in memory, so a newcomer sees live metrics
without having, or leaking, any real secret.
"""

from __future__ import annotations

import dataclasses
import secrets

from ..core.endpoints import ENDPOINTS
from ..core.settings import (
    STALE_INTERVALS,
    AccountConfig,
    AppAuth,
    Config,
    Secret,
    SecretRef,
    TokenAuth,
    collector_config,
)

DEMO_INTERVAL = 5.0
DEMO_TIMEOUT = 2.0
# Every collector, all at the demo's interval, so a newcomer sees every metric at once.
DEMO_COLLECTORS = tuple(
    collector_config((name, DEMO_INTERVAL, None), DEMO_INTERVAL, STALE_INTERVALS * DEMO_INTERVAL)
    for name in ENDPOINTS
)


def demo_config() -> Config:
    """Two accounts, one per auth kind, running every collector; `point_at` aims them at
    a running simulator."""
    app = AccountConfig(
        name="demo-app",
        user_id="1505084218764547200",
        auth=AppAuth(
            app_id=secrets.token_hex(32),
            secret=SecretRef(key="app_secret", value=Secret(secrets.token_urlsafe(24))),
        ),
        interval=DEMO_INTERVAL,
        timeout=DEMO_TIMEOUT,
        collectors=DEMO_COLLECTORS,
    )
    token = AccountConfig(
        name="demo-token",
        user_id="1505084218764547201",
        auth=TokenAuth(
            token=SecretRef(key="token", value=Secret("Bearer+" + secrets.token_hex(24)))
        ),
        interval=DEMO_INTERVAL,
        timeout=DEMO_TIMEOUT,
        collectors=DEMO_COLLECTORS,
    )
    return Config(accounts=(app, token), source="<demo>")


def point_at(config: Config, endpoint: str) -> Config:
    """The simulator ignores endpoints, so it can start first and pick a free port."""
    accounts = tuple(dataclasses.replace(a, endpoint=endpoint) for a in config.accounts)
    return dataclasses.replace(config, accounts=accounts)
