"""The pre-rendered exposition shows exactly what the state holds, and nothing more."""

from __future__ import annotations

import dataclasses
import platform

from prometheus_client.parser import text_string_to_metric_families

from exporter import __version__
from exporter.core.config import AccountConfig, Secret, SecretRef, TokenAuth
from exporter.core.exposition import Exposition
from exporter.core.model import Reason, Snapshot, UsageBytes
from exporter.core.state import ExporterState


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Scraper:
    """Reads sample values from the exposition the way Prometheus' parser sees them."""

    def __init__(self, state: ExporterState, clock: Clock | None = None) -> None:
        self.exposition = Exposition(state, clock=clock or Clock(1700000001.0))

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        text = self.exposition.render().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == (labels or {}):
                    return sample.value
        return None


def registry_for(state: ExporterState, clock: Clock | None = None) -> Scraper:
    return Scraper(state, clock)


def accounts(*names: str, interval: float = 60.0) -> list[AccountConfig]:
    token = TokenAuth(token=SecretRef(key="token", value=Secret("t")))
    return [AccountConfig(name=n, user_id=n, auth=token, interval=interval) for n in names]


def ok(account: str, at: float, used: int, duration: float = 0.2) -> Snapshot:
    usage = UsageBytes(allocated=100, capacity=1000, used=used)
    return Snapshot(account=account, started_at=at, duration=duration, trace_id="t", usage=usage)


def failed(account: str, reason: Reason, at: float = 0.0, duration: float = 3.0) -> Snapshot:
    return Snapshot(account, at, duration, "t", reason=reason, detail="x", failures=(reason,))


def test_nothing_per_account_before_the_first_poll() -> None:
    registry = registry_for(ExporterState(accounts("a")))
    assert registry.get_sample_value("koodrive_up", {"account": "a"}) is None
    assert registry.get_sample_value("koodrive_space_used_bytes", {"account": "a"}) is None
    assert registry.get_sample_value("koodrive_poll_duration_seconds_count") == 0
    build = {"version": __version__, "python_version": platform.python_version()}
    assert registry.get_sample_value("koodrive_exporter_build_info", build) == 1


def test_success_then_failure_keeps_values_and_reports_down() -> None:
    state = ExporterState(accounts("a", "b"))
    registry = registry_for(state)
    state.record(ok("a", at=1700000000.5, used=1200))
    state.record(failed("b", Reason.AUTH))
    a, b = {"account": "a"}, {"account": "b"}
    assert registry.get_sample_value("koodrive_up", a) == 1
    assert registry.get_sample_value("koodrive_space_used_bytes", a) == 1200
    assert registry.get_sample_value("koodrive_space_capacity_bytes", a) == 1000
    assert registry.get_sample_value("koodrive_space_allocated_bytes", a) == 100
    assert registry.get_sample_value("koodrive_last_success_timestamp_seconds", a) == 1700000000.5
    assert registry.get_sample_value("koodrive_last_poll_duration_seconds", a) == 0.2
    assert registry.get_sample_value("koodrive_up", b) == 0
    assert registry.get_sample_value("koodrive_space_used_bytes", b) is None
    assert registry.get_sample_value("koodrive_last_success_timestamp_seconds", b) is None
    assert registry.get_sample_value("koodrive_poll_errors_total", {**b, "reason": "auth"}) == 1

    state.record(failed("a", Reason.TIMEOUT, duration=10.0))
    state.record(failed("a", Reason.TIMEOUT, duration=10.0))
    assert registry.get_sample_value("koodrive_up", a) == 0
    assert registry.get_sample_value("koodrive_space_used_bytes", a) == 1200  # last success
    assert registry.get_sample_value("koodrive_poll_errors_total", {**a, "reason": "timeout"}) == 2
    assert registry.get_sample_value("koodrive_last_poll_duration_seconds", a) == 10.0


def test_poll_duration_histogram_buckets() -> None:
    state = ExporterState(accounts("a"))
    registry = registry_for(state)
    for duration in (0.01, 0.1, 0.1, 0.7, 45.0):
        state.record(ok("a", at=1.0, used=1, duration=duration))
    value = registry.get_sample_value
    assert value("koodrive_poll_duration_seconds_bucket", {"le": "0.025"}) == 1
    assert value("koodrive_poll_duration_seconds_bucket", {"le": "0.1"}) == 3
    assert value("koodrive_poll_duration_seconds_bucket", {"le": "1.0"}) == 4
    assert value("koodrive_poll_duration_seconds_bucket", {"le": "30.0"}) == 4
    assert value("koodrive_poll_duration_seconds_bucket", {"le": "+Inf"}) == 5
    assert value("koodrive_poll_duration_seconds_count") == 5
    assert abs(value("koodrive_poll_duration_seconds_sum") - 45.91) < 1e-9


def test_exposition_has_help_types_no_timestamps_and_escaped_labels() -> None:
    state = ExporterState(accounts('we"ird\\name\n'))
    state.record(ok('we"ird\\name\n', at=5.0, used=7))
    text = registry_for(state).exposition.render().decode()
    assert 'account="we\\"ird\\\\name\\n"' in text
    assert "# HELP koodrive_space_used_bytes" in text
    assert "cached" in text.lower()
    assert "# TYPE koodrive_poll_errors_total counter" in text
    for line in text.splitlines():
        if line and not line.startswith("#"):
            fields = line.rsplit("}", 1)[1].split() if "}" in line else line.split()[1:]
            assert len(fields) == 1, line  # a value and no timestamp


def test_stale_space_gauges_disappear_but_up_and_timestamp_stay() -> None:
    state = ExporterState(accounts("a", interval=60))  # stale after 180 s
    clock = Clock(1000.0)
    registry = registry_for(state, clock)
    state.record(ok("a", at=1000.0, used=5))
    state.record(failed("a", Reason.TIMEOUT, at=1060.0))
    a = {"account": "a"}
    clock.now = 1180.0
    assert registry.get_sample_value("koodrive_space_used_bytes", a) == 5
    clock.now = 1180.5
    assert registry.get_sample_value("koodrive_space_used_bytes", a) is None
    assert registry.get_sample_value("koodrive_space_capacity_bytes", a) is None
    assert registry.get_sample_value("koodrive_up", a) == 0
    assert registry.get_sample_value("koodrive_last_success_timestamp_seconds", a) == 1000.0
    state.record(ok("a", at=1181.0, used=6))
    assert registry.get_sample_value("koodrive_space_used_bytes", a) == 6


def test_clock_skew_and_reload_metrics() -> None:
    state = ExporterState(accounts("a", "b"), loaded_at=1234.5)
    registry = registry_for(state)
    snapshot = ok("a", at=1.0, used=1)
    state.record(dataclasses.replace(snapshot, clock_skew=-120.4))
    state.record(failed("b", Reason.CONNECTION))
    assert registry.get_sample_value("koodrive_clock_skew_seconds", {"account": "a"}) == -120.4
    assert registry.get_sample_value("koodrive_clock_skew_seconds", {"account": "b"}) is None
    assert registry.get_sample_value("koodrive_exporter_config_last_reload_successful") == 1
    name = "koodrive_exporter_config_last_reload_success_timestamp_seconds"
    assert registry.get_sample_value(name) == 1234.5
    state.reloaded(False, 2000.0)
    assert registry.get_sample_value("koodrive_exporter_config_last_reload_successful") == 0


def test_scrapes_reuse_the_rendered_bytes_until_something_changes() -> None:
    state = ExporterState(accounts("a", "b"))
    clock = Clock(1000.0)
    exposition = Exposition(state, clock=clock, process_metrics=False)
    state.record(ok("a", at=999.0, used=5))
    first = exposition.render()
    assert exposition.render() is first  # cached: no rendering at all
    state.record(ok("b", at=999.5, used=7))
    second = exposition.render()
    assert second is not first
    assert b'koodrive_space_used_bytes{account="b"} 7\n' in second
    assert b'koodrive_space_used_bytes{account="a"} 5\n' in second


def test_gzip_is_cached_and_decodes_to_the_plain_body() -> None:
    import gzip

    state = ExporterState(accounts("a"))
    state.record(ok("a", at=1.0, used=5))
    exposition = Exposition(state, clock=Clock(2.0), process_metrics=False)
    packed = exposition.render(gzipped=True)
    assert exposition.render(gzipped=True) is packed
    assert gzip.decompress(packed) == exposition.render()


def test_a_poll_re_renders_only_its_chunk(monkeypatch) -> None:
    import exporter.core.exposition as module

    names = [f"tenant-{i:04d}" for i in range(3 * module.CHUNK)]
    state = ExporterState(accounts(*names))
    for name in names:
        state.record(ok(name, at=1.0, used=1))
    exposition = Exposition(state, clock=Clock(2.0), process_metrics=False)
    exposition.render()
    calls: list[str] = []
    original = module.account_lines
    monkeypatch.setattr(module, "account_lines", lambda n, a: calls.append(n) or original(n, a))
    state.record(ok(names[300], at=1.5, used=42))
    body = exposition.render().decode()
    assert calls == [names[300]]
    assert f'koodrive_space_used_bytes{{account="{names[300]}"}} 42\n' in body
    assert body.count("koodrive_space_used_bytes{") == len(names)


def test_large_exposition_passes_promtool(promtool: str) -> None:
    import subprocess

    names = [f'tenant "{i}"\\x' for i in range(600)]
    state = ExporterState(accounts(*names))
    for i, name in enumerate(names):
        state.record(ok(name, at=1.0, used=i) if i % 3 else failed(name, Reason.AUTH))
    text = Exposition(state, clock=Clock(2.0)).render().decode()
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert (check.returncode, check.stdout, check.stderr) == (0, "", "")
    assert "process_resident_memory_bytes" in text
    assert "koodrive_exporter_shard_accounts 600\n" in text
    families = {f.name for f in text_string_to_metric_families(text)}
    assert "koodrive_poll_errors" in families
