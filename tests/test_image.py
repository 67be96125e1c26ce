"""The container image, built from the Dockerfile and run as Kubernetes would run it.

There is no Docker engine and no registry on these machines, so buildah builds the image
(scripts/build-image) on a local stand-in for python:3.12-slim-bookworm made by debootstrap
from Debian's packages (scripts/python-base-image, cached between runs), and the image's
root is run without a container runtime (scripts/run-image-root): read-only, as UID/GID
65532 with no capabilities, the exporter as PID 1 of its own PID namespace. What the image
says about itself (entrypoint, environment, user, HEALTHCHECK) is read from its config,
never repeated here, so the test runs what a kubelet or Docker would run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import ROOT, required_tool, value

import exporter

TAG = "localhost/koodrive-exporter:test"
USER = "65532:65532"
DEMO_ACCOUNTS = ("demo-app", "demo-token")
# Cold (debootstrap) builds take a few minutes, warm ones seconds; both well inside this.
BUILD_TIMEOUT = 1500


@dataclass(frozen=True)
class Image:
    storage: Path
    config: dict[str, Any]
    base: str

    def buildah(self, *args: str, timeout: float = 120) -> str:
        """buildah on this test's own storage (vfs: plain directories, no overlay mounts)."""
        command = [
            "buildah",
            "--root",
            str(self.storage / "root"),
            "--runroot",
            str(self.storage / "run"),
            "--storage-driver",
            "vfs",
            *args,
        ]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
        assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
        return result.stdout.strip()

    def inspect(self, name: str) -> dict[str, Any]:
        return json.loads(self.buildah("inspect", "--type", "image", name))

    @property
    def environment(self) -> list[str]:
        """The image's Env plus HOME=/, which runtimes add for a user with no passwd entry."""
        return [*self.config["Env"], "HOME=/"]


def needs_root_and_tools() -> None:
    """buildah (vfs, chroot isolation), unshare and chroot need root here. Under CI a gap is
    a failure; elsewhere a non-root run skips, since it cannot build without sudo."""
    if os.geteuid() != 0:
        message = "building and running the image needs root (buildah, unshare, chroot)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    for tool, package in (
        ("buildah", "buildah"),
        ("debootstrap", "debootstrap"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("setpriv", "util-linux"),
        ("chroot", "coreutils"),
    ):
        required_tool(tool, package)


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    """The image, built once for the module in a throwaway buildah storage."""
    needs_root_and_tools()
    storage = Path(tempfile.mkdtemp(prefix="koodrive-image-", dir="/var/tmp"))
    try:
        build = subprocess.run(
            [str(ROOT / "scripts" / "build-image"), str(storage), TAG],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-5000:]
        probe = Image(storage, {}, "")
        config = probe.inspect(TAG)["Docker"]["config"]
        (base,) = [
            name
            for listed in json.loads(probe.buildah("images", "--json"))
            for name in listed["names"]
            if name.startswith("localhost/koodrive-python-base:")
        ]
        yield Image(storage, config, base)
    finally:
        subprocess.run(
            ["buildah", "--root", str(storage / "root"), "--runroot", str(storage / "run"),
             "--storage-driver", "vfs", "rm", "--all"],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        shutil.rmtree(storage, ignore_errors=True)


def test_image_config_is_what_the_dockerfile_says(image: Image) -> None:
    config = image.config
    assert config["Labels"]["org.opencontainers.image.version"] == exporter.__version__
    assert config["Labels"]["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert config["User"] == USER
    assert config["Entrypoint"] == ["koodrive-exporter"]
    assert config["Cmd"] == ["--config.file=/etc/koodrive-exporter/config.yaml"]
    assert list(config["ExposedPorts"]) == ["9877/tcp"]
    # Kept only because buildah builds with --format docker; OCI images have no such field.
    assert config["Healthcheck"]["Test"] == ["CMD", "python", "-m", "exporter.healthcheck"]
    assert config["Healthcheck"]["Timeout"] == 5 * 10**9
    assert "PYTHONDONTWRITEBYTECODE=1" in config["Env"]
    assert config["Env"][-3].startswith("PATH=/opt/venv/bin:")


def test_runtime_stage_adds_one_small_layer_the_venv_without_pip(
    image: Image, tmp_path: Path
) -> None:
    base_layers = image.inspect(image.base)["Docker"]["rootfs"]["diff_ids"]
    layers = image.inspect(TAG)["Docker"]["rootfs"]["diff_ids"]
    assert layers[: len(base_layers)] == base_layers
    assert len(layers) == len(base_layers) + 1
    # The sizes a registry would store (gzip), as an OCI layout on disk.
    image.buildah("push", "--quiet", TAG, f"oci:{tmp_path / 'oci'}")
    blobs = tmp_path / "oci" / "blobs" / "sha256"
    (entry,) = json.loads((tmp_path / "oci" / "index.json").read_text())["manifests"]
    manifest = json.loads((blobs / entry["digest"].split(":")[1]).read_text())
    sizes = [layer["size"] for layer in manifest["layers"]]
    assert len(sizes) == len(layers)
    assert sizes[-1] < 15 * 10**6, sizes  # the venv: the exporter and its dependencies
    assert sum(sizes) < 150 * 10**6, sizes
    container = image.buildah("from", "--quiet", "--pull-never", TAG)
    try:
        root = Path(image.buildah("mount", container))
        venv = root / "opt" / "venv"
        assert (venv / "bin" / "koodrive-exporter").is_file()
        assert not (venv / "bin" / "pip").exists()
        assert len(list(venv.glob("lib/python3*/site-packages/koodrive_exporter-*.dist-info"))) == 1
        assert not (root / "src").exists()  # the build stage stays behind
        venv_bytes = sum(p.lstat().st_size for p in venv.rglob("*") if p.is_file())
        assert venv_bytes < 60 * 2**20, venv_bytes
    finally:
        image.buildah("rm", container)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def snapshot(root: Path) -> dict[str, tuple[int, int, int, int, int]]:
    """Every path under root with its mode, owner, group, size and mtime (no contents: a
    write changes size or mtime, and a new file is a new path)."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            found[path] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns)
    return found


def exporter_pid(unshare: subprocess.Popen[bytes], deadline: float) -> int:
    """The forked child of unshare: PID 1 in its namespace, the exporter once exec'd."""
    children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children")
    while time.monotonic() < deadline:
        pids = children.read_text().split() if children.exists() else []
        if pids:
            return int(pids[0])
        time.sleep(0.05)
    raise AssertionError("unshare never forked")


def scrape_until_up(url: str, deadline: float) -> str:
    body = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (loopback)
                body = response.read().decode()
            if all(value(body, "koodrive_up", account=a) == 1 for a in DEMO_ACCOUNTS):
                return body
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"demo accounts not up by the deadline; last body:\n{body[-2000:]}")


def status_fields(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: rest.strip() for key, _, rest in (line.partition(":") for line in lines)}


def healthcheck(image: Image, pid: int, port: int) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, run as Docker runs it: inside the container (its
    mount and PID namespaces and root), as the image's user, with the image's environment.
    The port is not the default 9877, so the probe is told (KOODRIVE_HEALTHCHECK_PORT)."""
    check = image.config["Healthcheck"]
    assert check["Test"][0] == "CMD", check
    uid, gid = image.config["User"].split(":")
    nsenter = required_tool("nsenter", "util-linux")
    return subprocess.run(
        ["env", "-i", *image.environment, f"KOODRIVE_HEALTHCHECK_PORT={port}",
         nsenter, f"--target={pid}", "--mount", "--pid", "--root", "--wd",
         f"--setuid={uid}", f"--setgid={gid}", "--", *check["Test"][1:]],
        capture_output=True, text=True, timeout=check["Timeout"] / 1e9 + 5, check=False,
    )  # fmt: skip


def test_image_runs_read_only_as_65532_and_stops_on_sigterm(image: Image, tmp_path: Path) -> None:
    container = image.buildah("from", "--quiet", "--pull-never", TAG)
    unshare: subprocess.Popen[bytes] | None = None
    try:
        root = Path(image.buildah("mount", container))
        before = snapshot(root)
        port = free_port()
        # As a pod with `args:` runs it: the image's entrypoint, the arguments replace Cmd.
        command = [*image.config["Entrypoint"], "--demo", f"--web.listen-address=127.0.0.1:{port}"]
        log = (tmp_path / "exporter.log").open("wb")
        unshare = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "--kill-child",
             str(ROOT / "scripts" / "run-image-root"), str(root), image.config["User"],
             *image.environment, "--", *command],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        pid = exporter_pid(unshare, deadline)
        body = scrape_until_up(f"http://127.0.0.1:{port}/metrics", deadline)
        for account in DEMO_ACCOUNTS:
            assert value(body, "koodrive_up", account=account) == 1
            used = value(body, "koodrive_space_used_bytes", account=account)
            assert used is not None
            assert used > 0

        # What the exporter runs as, seen from the host.
        status = status_fields(pid)
        assert status["Uid"].split() == ["65532"] * 4
        assert status["Gid"].split() == ["65532"] * 4
        assert status["Groups"] == ""
        assert int(status["CapEff"], 16) == 0
        assert int(status["CapPrm"], 16) == 0
        assert status["NoNewPrivs"] == "1"
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [
            b"/opt/venv/bin/koodrive-exporter",
            b"--demo",
        ]
        mounts = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        (root_mount,) = [m.split() for m in mounts if m.split()[4] == "/"]
        assert "ro" in root_mount[5].split(","), root_mount

        healthy = healthcheck(image, pid, port)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        # The probe is not vacuous: against a port nobody listens on, it fails.
        unhealthy = healthcheck(image, pid, free_port())
        assert unhealthy.returncode == 1, unhealthy.stdout + unhealthy.stderr

        os.kill(pid, signal.SIGTERM)  # what the kubelet sends PID 1 of the container
        assert unshare.wait(timeout=20) == 0
        log.close()
        output = (tmp_path / "exporter.log").read_text(encoding="utf-8", errors="replace")
        assert '"event": "shutting_down"' in output, output[-3000:]
        assert "Traceback" not in output, output[-3000:]
        assert "Read-only file system" not in output, output[-3000:]

        # Nothing inside the image changed: no bytecode, no state, no log files.
        after = snapshot(root)
        assert sorted(set(after) - set(before)) == []
        assert sorted(set(before) - set(after)) == []
        assert [p for p in before if before[p] != after[p]] == []
    finally:
        if unshare is not None and unshare.poll() is None:
            unshare.kill()  # --kill-child takes the exporter with it
            unshare.wait(timeout=10)
        image.buildah("rm", container)
