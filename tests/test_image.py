"""The container image, built from the Dockerfile and run as Kubernetes would run it.

There is no Docker engine and no registry on these machines, so buildah builds the image
(scripts/build-image) on a local stand-in for python:3.12-slim-bookworm made by debootstrap
from Debian's packages (scripts/python-base-image, cached between runs), and the image's
root is run without a container runtime (scripts/run-image-root): read-only, as UID/GID
65532 with no capabilities, the exporter as PID 1 of its own PID namespace; and once more
as root on a writable root, to see that nothing is written inside it. What the image
says about itself (entrypoint, environment, user, HEALTHCHECK) is read from its config,
never repeated here, so the test runs what a kubelet or Docker would run.
"""

from __future__ import annotations

import fcntl
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
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from support import ROOT, in_ci, required_tool, samples, value

import exporter

TAG = "localhost/koodrive-exporter:test"
USER = "65532:65532"
DEMO_ACCOUNTS = ("demo-app", "demo-token")
# Cold (debootstrap) builds take a few minutes, warm ones seconds; both well inside this.
BUILD_TIMEOUT = 1500
# The build's scripts stop every step by KOODRIVE_BUILD_DEADLINE, this long before
# BUILD_TIMEOUT, so they clean up after themselves before this test has to kill them.
BUILD_MARGIN = 60
# buildah with the storage options, time-bounded: the one command the scripts use too.
BUILDAH_VFS = ROOT / "scripts" / "buildah-vfs"
# Throwaway buildah storages live here, one per test run, named STORAGE_PREFIX + random.
STORAGE_PARENT = Path("/var/tmp")
STORAGE_PREFIX = "koodrive-image-"
# Held (shared) by the run that uses a storage; a storage whose lock nobody holds is stale.
IN_USE = "in-use.lock"
# A storage without the lock file (left by an older version of this test) is stale once it
# is older than any run can last.
ABANDONED_AFTER = 2 * 3600


@dataclass(frozen=True)
class Image:
    storage: Path
    config: dict[str, Any]
    base: str

    def buildah(self, *args: str, timeout: float = 120) -> str:
        """buildah on this test's own storage, through the scripts' own wrapper."""
        result = subprocess.run(
            [str(BUILDAH_VFS), str(self.storage), str(int(timeout)), *args],
            capture_output=True,
            text=True,
            timeout=timeout + 15,  # the wrapper's timeout ends it first (KILL after 10 s)
            check=False,
        )
        assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
        return result.stdout.strip()

    def inspect(self, name: str) -> dict[str, Any]:
        return json.loads(self.buildah("inspect", "--type", "image", name))

    @property
    def env(self) -> dict[str, str]:
        """The image's Env as a mapping, so no check depends on the order of its entries."""
        return dict(entry.split("=", 1) for entry in self.config["Env"])

    @property
    def environment(self) -> list[str]:
        """The image's Env plus HOME=/, which runtimes add for a user with no passwd entry."""
        return [*self.config["Env"], "HOME=/"]


def needs_root_and_tools() -> None:
    """buildah (vfs, chroot isolation), unshare and chroot need root here. Under CI a gap is
    a failure; elsewhere a non-root run skips, since it cannot build without sudo."""
    if os.geteuid() != 0:
        message = "building and running the image needs root (buildah, unshare, chroot)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    for tool, package in (
        ("buildah", "buildah"),
        ("debootstrap", "debootstrap"),
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("setpriv", "util-linux"),
        ("flock", "util-linux"),
        ("chroot", "coreutils"),
        ("timeout", "coreutils"),
    ):
        required_tool(tool, package)


def sweep_stale_storages(parent: Path) -> list[Path]:
    """Remove the storages of runs that are gone (killed, timed out, lost machine): each
    holds gigabytes of image layers. A live run holds its storage's lock, so a lock that can
    be taken marks a dead one; the lock is held while the storage is removed."""
    removed = []
    for storage in sorted(parent.glob(STORAGE_PREFIX + "*")):
        if not storage.is_dir() or storage.is_symlink():
            continue
        lock = storage / IN_USE
        try:
            with lock.open("rb") as held:
                try:
                    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # in use
                shutil.rmtree(storage, ignore_errors=True)
        except FileNotFoundError:
            # No lock file: an older version's storage, or one being set up this instant.
            if time.time() - storage.stat().st_mtime < ABANDONED_AFTER:
                continue
            shutil.rmtree(storage, ignore_errors=True)
        removed.append(storage)
    return removed


def claim_storage(parent: Path) -> tuple[Path, IO[bytes]]:
    """A fresh storage directory and its lock, held shared until the returned file closes."""
    storage = Path(tempfile.mkdtemp(prefix=STORAGE_PREFIX, dir=parent))
    held = (storage / IN_USE).open("wb")
    fcntl.flock(held, fcntl.LOCK_SH)
    return storage, held


def session_members(session: int) -> list[int]:
    """The processes of a session, from /proc (field 6 of /proc/PID/stat)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # After the command name in parentheses: state, ppid, pgrp, session, ...
        fields = stat.rpartition(")")[2].split()
        if int(fields[3]) == session and fields[0] != "Z":  # a zombie waits to be reaped
            members.append(int(entry.name))
    return members


def kill_session(session: int) -> None:
    """SIGKILL every process of a session, until none is left. Killing the process group
    is not enough: `timeout` (scripts/bounded) moves its command into a group of its own,
    and subprocess.run's timeout kills only the direct child."""
    for _ in range(50):
        members = session_members(session)
        if not members:
            return
        for pid in members:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise AssertionError(f"session {session} still has {session_members(session)}")


def run_in_own_session(
    command: list[str], timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run command in a session of its own; on timeout, kill the whole session (buildah,
    debootstrap and their children too), then fail."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(process.pid)
        stdout, stderr = process.communicate(timeout=30)
        raise AssertionError(
            f"{command[0]} timed out after {timeout} s; its session was killed\n{stderr[-5000:]}"
        ) from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    """The image, built once for the module in a throwaway buildah storage."""
    needs_root_and_tools()
    sweep_stale_storages(STORAGE_PARENT)
    storage, held = claim_storage(STORAGE_PARENT)
    try:
        deadline = int(time.time()) + BUILD_TIMEOUT - BUILD_MARGIN
        build = run_in_own_session(
            [str(ROOT / "scripts" / "build-image"), str(storage), TAG],
            timeout=BUILD_TIMEOUT,
            env={**os.environ, "KOODRIVE_BUILD_DEADLINE": str(deadline)},
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
            [str(BUILDAH_VFS), str(storage), "120", "rm", "--all"],
            capture_output=True,
            timeout=135,
            check=False,
        )
        shutil.rmtree(storage, ignore_errors=True)
        held.close()


def test_a_timed_out_build_leaves_no_process_behind(tmp_path: Path) -> None:
    """What a build that overruns leaves: nothing, even below a `timeout` (its own process
    group), which is how the build scripts run buildah and debootstrap."""
    marker = f"{time.time_ns() % 10**6}.25"  # a sleep nobody else runs
    script = f"timeout 300 sleep {marker} & timeout 300 bash -c 'sleep {marker}; :' & wait"
    started = time.monotonic()
    with pytest.raises(AssertionError, match="timed out"):
        run_in_own_session(["bash", "-c", script], timeout=1)
    assert time.monotonic() - started < 10

    def sleepers() -> list[int]:
        found = []
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[:2] == [b"sleep", marker.encode()]:
                found.append(int(entry.name))
        return found

    assert sleepers() == []


def test_stale_storages_are_swept_and_live_ones_kept(tmp_path: Path) -> None:
    live, held = claim_storage(tmp_path)
    dead, released = claim_storage(tmp_path)
    released.close()  # its run ended without cleaning up
    old = Path(tempfile.mkdtemp(prefix=STORAGE_PREFIX, dir=tmp_path))  # no lock file
    os.utime(old, (time.time() - ABANDONED_AFTER - 60,) * 2)
    young = Path(tempfile.mkdtemp(prefix=STORAGE_PREFIX, dir=tmp_path))  # being set up
    other = tmp_path / "unrelated"
    other.mkdir()
    try:
        assert sweep_stale_storages(tmp_path) == sorted([dead, old])
        assert {p.name for p in tmp_path.iterdir()} == {live.name, young.name, other.name}
    finally:
        held.close()


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
    assert image.env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert image.env["PATH"].startswith("/opt/venv/bin:")


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


def healthcheck(image: Image, pid: int, port: int, user: str) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, run as Docker runs it: inside the container (its
    mount and PID namespaces and root), as the container's user, with the image's
    environment. The port is not the default 9877, so the probe is told
    (KOODRIVE_HEALTHCHECK_PORT)."""
    check = image.config["Healthcheck"]
    assert check["Test"][0] == "CMD", check
    uid, gid = user.split(":")
    nsenter = required_tool("nsenter", "util-linux")
    return subprocess.run(
        ["env", "-i", *image.environment, f"KOODRIVE_HEALTHCHECK_PORT={port}",
         nsenter, f"--target={pid}", "--mount", "--pid", "--root", "--wd",
         f"--setuid={uid}", f"--setgid={gid}", "--", *check["Test"][1:]],
        capture_output=True, text=True, timeout=check["Timeout"] / 1e9 + 5, check=False,
    )  # fmt: skip


@dataclass(frozen=True)
class Running:
    unshare: subprocess.Popen[bytes]
    pid: int  # the exporter: PID 1 of its PID namespace
    port: int
    log: Path


@contextmanager
def exporter_in(
    image: Image, root: Path, log: Path, *, user: str, writable: bool = False
) -> Iterator[Running]:
    """The exporter running from the image's root, as a pod with `args:` runs it: the
    image's entrypoint, the arguments replacing Cmd; the root read-only unless `writable`."""
    port = free_port()
    command = [*image.config["Entrypoint"], "--demo", f"--web.listen-address=127.0.0.1:{port}"]
    options = ["--writable"] if writable else []
    with log.open("wb") as sink:  # the child keeps its own copy of the descriptor
        unshare = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "--kill-child",
             str(ROOT / "scripts" / "run-image-root"), *options, str(root), user,
             *image.environment, "--", *command],
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        pid = exporter_pid(unshare, deadline)
        running = Running(unshare, pid, port, log)
        scrape_until_up(f"http://127.0.0.1:{port}/metrics", deadline)
        yield running
    finally:
        if unshare.poll() is None:
            unshare.kill()  # --kill-child takes the exporter with it
            unshare.wait(timeout=10)


def stop(running: Running) -> str:
    """SIGTERM to PID 1, as the kubelet sends it: a clean exit 0. Returns the exporter's log."""
    os.kill(running.pid, signal.SIGTERM)
    assert running.unshare.wait(timeout=20) == 0
    output = running.log.read_text(encoding="utf-8", errors="replace")
    assert '"event": "shutting_down"' in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    return output


@contextmanager
def mounted(image: Image) -> Iterator[Path]:
    """The root of a fresh container from the image (removed afterwards)."""
    container = image.buildah("from", "--quiet", "--pull-never", TAG)
    try:
        yield Path(image.buildah("mount", container))
    finally:
        image.buildah("rm", container)


def test_image_runs_read_only_as_65532_and_stops_on_sigterm(image: Image, tmp_path: Path) -> None:
    with (
        mounted(image) as root,
        exporter_in(image, root, tmp_path / "exporter.log", user=image.config["User"]) as run,
    ):
        body = scrape_until_up(f"http://127.0.0.1:{run.port}/metrics", time.monotonic() + 10)
        for account in DEMO_ACCOUNTS:
            assert value(body, "koodrive_up", account=account) == 1
            used = value(body, "koodrive_space_used_bytes", account=account)
            assert used is not None
            assert used > 0
        # The build facts scripts/build-image passed, recorded in the wheel (no .git inside).
        revision = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        build = [
            dict(labels)
            for (name, labels), sample in samples(body).items()
            if name == "koodrive_exporter_build_info" and sample == 1
        ]
        assert len(build) == 1
        assert build[0]["revision"] == revision
        assert build[0]["version"] == exporter.__version__

        # What the exporter runs as, seen from the host.
        status = status_fields(run.pid)
        assert status["Uid"].split() == ["65532"] * 4
        assert status["Gid"].split() == ["65532"] * 4
        assert status["Groups"] == ""
        assert int(status["CapEff"], 16) == 0
        assert int(status["CapPrm"], 16) == 0
        assert status["NoNewPrivs"] == "1"
        assert Path(f"/proc/{run.pid}/cmdline").read_bytes().split(b"\0")[1:3] == [
            b"/opt/venv/bin/koodrive-exporter",
            b"--demo",
        ]
        mounts = Path(f"/proc/{run.pid}/mountinfo").read_text().splitlines()
        (root_mount,) = [m.split() for m in mounts if m.split()[4] == "/"]
        assert "ro" in root_mount[5].split(","), root_mount

        healthy = healthcheck(image, run.pid, run.port, image.config["User"])
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        # The probe is not vacuous: against a port nobody listens on, it fails.
        unhealthy = healthcheck(image, run.pid, free_port(), image.config["User"])
        assert unhealthy.returncode == 1, unhealthy.stdout + unhealthy.stderr

        output = stop(run)
        assert "Read-only file system" not in output, output[-3000:]


def test_image_writes_nothing_inside_itself_even_where_it_could(
    image: Image, tmp_path: Path
) -> None:
    """Nothing written inside the image: no bytecode, no state, no log files.

    Neither the read-only run nor its user can show this: on a read-only root a write fails
    (and Python skips its bytecode cache silently), and as 65532 every directory of the
    root-owned image is closed to it. So this run is the most permissive one an image meets,
    `docker run --user 0` without `--read-only`: root, on a writable root. Only the image
    itself (PYTHONDONTWRITEBYTECODE, nothing written at run time) keeps it clean; without
    PYTHONDONTWRITEBYTECODE this run rewrites bytecode under /opt/venv and fails.
    """
    with mounted(image) as root:
        before = snapshot(root)
        with exporter_in(image, root, tmp_path / "exporter.log", user="0:0", writable=True) as run:
            mounts = Path(f"/proc/{run.pid}/mountinfo").read_text().splitlines()
            (root_mount,) = [m.split() for m in mounts if m.split()[4] == "/"]
            assert "rw" in root_mount[5].split(","), root_mount
            healthy = healthcheck(image, run.pid, run.port, "0:0")
            assert healthy.returncode == 0, healthy.stdout + healthy.stderr
            stop(run)
        after = snapshot(root)
    assert sorted(set(after) - set(before)) == []
    assert sorted(set(before) - set(after)) == []
    assert [p for p in before if before[p] != after[p]] == []
