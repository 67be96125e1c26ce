"""The systemd unit in docs/: systemd accepts it, its sandbox stays tight, and the command
line and credential path it documents work with the exporter as it is."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from support import ROOT, required_tool

UNIT = ROOT / "docs" / "koodrive-exporter.service"
INSTALLED = "/opt/koodrive-exporter/bin/koodrive-exporter"
# systemd-analyze security's overall exposure, x10 (0 best, 100 worst): 1.4 when written.
EXPOSURE_CAP = 14


def unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this venv's exporter (verify wants a real one)."""
    here = Path(sys.executable).parent / "koodrive-exporter"
    path = tmp_path / UNIT.name
    path.write_text(UNIT.read_text("utf-8").replace(INSTALLED, str(here)), "utf-8")
    return path


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    tool = required_tool("systemd-analyze", "systemd")
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    unit = unit_here(tmp_path)
    verdict = analyze("verify", unit.name, cwd=tmp_path)
    assert verdict.returncode == 0, verdict.stderr
    assert verdict.stderr == ""
    # The check is real: the same unit with a missing binary is refused.
    text = unit.read_text("utf-8")
    unit.write_text(re.sub(r"^ExecStart=\S+", "ExecStart=/nonexistent/x", text, flags=re.M))
    assert analyze("verify", unit.name, cwd=tmp_path).returncode != 0


def test_the_sandbox_stays_tight(tmp_path: Path) -> None:
    unit = unit_here(tmp_path)
    verdict = analyze(
        "security", "--offline=yes", f"--threshold={EXPOSURE_CAP}", unit.name, cwd=tmp_path
    )
    assert verdict.returncode == 0, verdict.stdout[-2000:]
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d)", verdict.stdout)
    assert exposure is not None
    assert float(exposure[1]) <= EXPOSURE_CAP / 10
    loosened = unit.read_text("utf-8").replace("ProtectSystem=strict\n", "")
    loosened = loosened.replace("DynamicUser=yes\n", "").replace("PrivateUsers=yes\n", "")
    unit.write_text(loosened, "utf-8")
    assert (
        analyze(
            "security", "--offline=yes", f"--threshold={EXPOSURE_CAP}", unit.name, cwd=tmp_path
        ).returncode
        != 0
    )


def test_its_command_line_and_credentials_work(tmp_path: Path) -> None:
    """ExecStart's flags as the exporter parses them, and a secret named through the
    CREDENTIALS_DIRECTORY that systemd sets, as the unit's comment tells to write it."""
    text = UNIT.read_text("utf-8")
    command = shlex.split(re.search(r"^ExecStart=(.+)$", text, re.M)[1])  # type: ignore[index]
    assert command[0] == INSTALLED
    credential = re.search(r"^LoadCredential=([\w-]+):", text, re.M)
    assert credential is not None
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / credential[1]).write_text("s3cret\n", "utf-8")
    config = tmp_path / "config.yaml"
    config.write_text(
        "accounts:\n"
        "  - name: acme\n"
        '    user_id: "1505084218764547200"\n'
        "    auth:\n"
        '      app_id: "a378331eca14"\n'
        f"      app_secret_file: ${{CREDENTIALS_DIRECTORY}}/{credential[1]}\n",
        "utf-8",
    )
    args = [
        f"--config.file={config}" if arg.startswith("--config.file=") else arg
        for arg in command[1:]
    ]
    assert f"--config.file={config}" in args
    result = subprocess.run(
        [sys.executable, "-m", "exporter", *args, "--config.check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)},
    )
    assert (result.returncode, result.stdout.strip()) == (0, "config OK: 1 accounts")
