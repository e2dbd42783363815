"""The loopback ADB daemon, driven by adb-shell and by Google's own adb client."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from adb_shell.adb_device import AdbDeviceTcp
from adb_shell.exceptions import AdbCommandFailureException
from click.testing import CliRunner

import cli
from devices.adb_keys import load_signer
from devices.adb_protocol import decode_public_key, load_public_keys
from devices.loopback import Sandbox, SandboxError
from devices_support import RawClient, daemon, make_key


def _client(port: int, key: Path) -> AdbDeviceTcp:
    dev = AdbDeviceTcp("127.0.0.1", port, default_transport_timeout_s=5)
    dev.connect(rsa_keys=[load_signer(key)], auth_timeout_s=5, read_timeout_s=5)
    return dev


def test_connect_auth_and_shell(served, key: Path) -> None:
    dev = _client(served.port, key)
    assert dev.shell("echo hi; echo err >&2") == "hi\nerr\n"
    assert dev.shell("getprop ro.product.model").strip() == "akd-loopback"
    assert dev.exec_out("pwd").strip() == str(served.root)
    # device paths are the sandbox's: /data/local/tmp exists there and nowhere else is touched
    dev.shell("echo x > /data/local/tmp/made-by-shell")
    assert (served.root / "data/local/tmp/made-by-shell").read_text() == "x\n"
    dev.close()


def test_push_pull_stat_list_round_trip(served, key: Path, tmp_path: Path) -> None:
    dev = _client(served.port, key)
    payload = random.Random(0).randbytes(2_500_123)  # several messages and several sync chunks
    src = tmp_path / "payload.bin"
    src.write_bytes(payload)
    dev.push(str(src), "/data/local/tmp/akd/deep/p.bin", st_mode=0o100750, mtime=1_700_000_000)
    stored = served.root / "data/local/tmp/akd/deep/p.bin"
    assert stored.read_bytes() == payload
    assert stored.stat().st_mode & 0o777 == 0o750
    mode, size, mtime = dev.stat("/data/local/tmp/akd/deep/p.bin")
    assert (size, mtime, mode & 0o777) == (len(payload), 1_700_000_000, 0o750)
    assert dev.stat("/data/local/tmp/none") == (0, 0, 0)
    names = sorted(bytes(f.filename).decode() for f in dev.list("/data/local/tmp/akd/deep"))
    assert names == ["p.bin"]
    dev.pull("/data/local/tmp/akd/deep/p.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == payload
    assert not list(stored.parent.glob(".akd-partial-*"))
    dev.close()


def test_several_streams_at_once(served, key: Path) -> None:
    from devices import adb_protocol as proto

    raw = RawClient(served.port, key)
    raw.send(proto.OPEN, 1, 0, b"shell:sleep 1; echo slow\0")
    raw.send(proto.OPEN, 2, 0, b"shell:echo fast\0")
    events = []
    remote = {}
    while len([e for e in events if e[0] == "CLSE"]) < 2:
        header, data = raw.read()
        if header.command == proto.OKAY and header.arg1 not in remote:
            remote[header.arg1] = header.arg0
        elif header.command == proto.WRTE:
            events.append(("WRTE", header.arg1, data))
            raw.send(proto.OKAY, header.arg1, header.arg0)
        elif header.command == proto.CLSE:
            events.append(("CLSE", header.arg1, b""))
    assert events == [("WRTE", 2, b"fast\n"), ("CLSE", 2, b""), ("WRTE", 1, b"slow\n"), ("CLSE", 1, b"")]
    assert remote[1] != remote[2]
    second = _client(served.port, key)  # and a second connection beside the first
    assert second.shell("echo two") == "two\n"
    second.close()
    raw.close()


def test_unknown_key_is_refused(served, tmp_path: Path) -> None:
    stranger = make_key(tmp_path / "other")
    dev = AdbDeviceTcp("127.0.0.1", served.port, default_transport_timeout_s=2)
    with pytest.raises(Exception) as exc:
        dev.connect(rsa_keys=[load_signer(stranger)], auth_timeout_s=2, read_timeout_s=2)
    assert not isinstance(exc.value, AssertionError)
    assert not dev.available
    dev.close()


def test_unknown_service_is_refused(served, key: Path) -> None:
    from devices import adb_protocol as proto

    raw = RawClient(served.port, key)
    for service in (b"reboot:\0", b"shell,v2,raw:id\0", b"tcp:5037\0"):
        raw.send(proto.OPEN, 7, 0, service)
        header, _ = raw.read()
        assert (header.command, header.arg0, header.arg1) == (proto.CLSE, 0, 7)
    raw.send(proto.OPEN, 8, 0, b"shell:echo still-here\0")
    assert raw.read()[0].command == proto.OKAY
    header, data = raw.read()
    assert (header.command, data) == (proto.WRTE, b"still-here\n")
    raw.close()


def test_protocol_violations_drop_only_that_client(served, key: Path) -> None:
    from devices import adb_protocol as proto

    bad_magic = bytes(24)
    open_before_auth = proto.pack_message(proto.OPEN, 1, 0, b"shell:id\0")
    bad_pubkey = proto.pack_message(proto.CNXN, proto.VERSION, 4096, b"host::\0")
    for payload in (bad_magic, open_before_auth, bad_pubkey):
        with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
            sock.sendall(payload)
            if payload is bad_pubkey:
                sock.recv(24 + proto.TOKEN_SIZE)
                sock.sendall(proto.pack_message(proto.AUTH, proto.AUTH_RSAPUBLICKEY, 0, b"garbage\0"))
            data = b"".join(iter(lambda: sock.recv(4096), b""))  # until the daemon closes
            assert proto.pack_message(proto.OKAY, 1, 1)[:4] not in data
    assert _client(served.port, key).shell("echo fine") == "fine\n"


def test_sandbox_escapes_fail(served, key: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    (served.root / "data/local/tmp/link").symlink_to(outside)
    (served.root / "data/local/tmp/filelink").symlink_to(outside / "secret")
    dev = _client(served.port, key)
    for path in ("/data/../../outside/secret", "/data/local/tmp/link/secret", "/data/local/tmp/filelink", str(outside / "secret")):
        with pytest.raises(AdbCommandFailureException):
            dev.pull(path, str(tmp_path / "got"))
    assert not (tmp_path / "got").exists() or "host secret" not in (tmp_path / "got").read_text()
    src = tmp_path / "evil"
    src.write_text("evil")
    for path in ("/data/local/tmp/link/planted", "/data/../../planted"):
        with pytest.raises(Exception, match="outside|not allowed"):
            dev.push(str(src), path)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert dev.stat("/data/local/tmp/link/secret") == (0, 0, 0)
    assert dev.shell("echo alive") == "alive\n"
    dev.close()


def test_sandbox_resolve(tmp_path: Path) -> None:
    box = Sandbox(tmp_path / "root")
    assert box.resolve("/data/local/tmp/x") == box.root / "data/local/tmp/x"
    assert box.resolve("relative/x") == box.root / "relative/x"
    for bad in ("/data/../x", "../x", "/a/\0b"):
        with pytest.raises(SandboxError):
            box.resolve(bad)
    assert box.shell_command("cat /data/x '/sdcard/y' --graph=/data/z /database /etc/data/q") == (
        f"cat {box.root}/data/x '{box.root}/sdcard/y' --graph={box.root}/data/z /database /etc/data/q"
    )


def test_clean_shutdown_kills_running_commands(tmp_path: Path, key: Path) -> None:
    from devices import adb_protocol as proto

    marker = tmp_path / "pid"
    with daemon(tmp_path / "root", key) as d:
        raw = RawClient(d.port, key)
        raw.send(proto.OPEN, 1, 0, f"shell:echo $$ > {marker}; sleep 60\0".encode())
        for _ in range(200):
            if marker.exists() and marker.read_text().strip():
                break
            time.sleep(0.05)
        pid = int(marker.read_text())
        port = d.port
        start = time.monotonic()
    assert time.monotonic() - start < 5
    with pytest.raises(ConnectionResetError):  # the daemon closed its side
        while True:
            raw.read()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    raw.close()


def test_public_key_file_errors(tmp_path: Path) -> None:
    from akd_base.errors import DeviceError

    bad = tmp_path / "keys"
    bad.write_text("-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(DeviceError, match="not an ADB public key"):
        load_public_keys(bad)
    bad.write_text("# only a comment\n")
    with pytest.raises(DeviceError, match="no ADB public key"):
        load_public_keys(bad)
    with pytest.raises(DeviceError, match="cannot read"):
        load_public_keys(tmp_path / "missing")
    key = make_key(tmp_path)
    assert decode_public_key(Path(f"{key}.pub").read_text()).exponent == 65537


# ---------------------------------------------------------------- Google's adb client

ADB = shutil.which("adb")


@pytest.fixture()
def google_adb(tmp_path: Path):
    """Google's adb with a HOME, key and server port of this test's own; its server killed after."""
    if ADB is None:
        pytest.skip("Google's adb is not installed (Debian package adb)")
    home = tmp_path / "home"
    (home / ".android").mkdir(parents=True)
    key = make_key(home / ".android")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        server_port = s.getsockname()[1]
    env = {**os.environ, "HOME": str(home), "ANDROID_USER_HOME": str(home / ".android"),
           "ANDROID_ADB_SERVER_PORT": str(server_port), "ADB_VENDOR_KEYS": str(key)}

    def adb(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ADB, *args], env=env, capture_output=True, text=True, timeout=timeout)

    try:
        yield adb, key
    finally:
        adb("kill-server")


def test_google_adb_connect_shell_push_pull(google_adb, tmp_path: Path) -> None:
    adb, key = google_adb
    with daemon(tmp_path / "root", key) as d:
        serial = f"127.0.0.1:{d.port}"
        assert "connected to" in adb("connect", serial).stdout
        adb("-s", serial, "wait-for-device", timeout=20)
        assert f"{serial}\tdevice" in adb("devices").stdout
        assert adb("-s", serial, "shell", "echo", "hi").stdout == "hi\n"
        data = random.Random(1).randbytes(1_300_000)
        (tmp_path / "up.bin").write_bytes(data)
        push = adb("-s", serial, "push", str(tmp_path / "up.bin"), "/data/local/tmp/g/up.bin")
        assert push.returncode == 0, push.stderr
        assert (d.root / "data/local/tmp/g/up.bin").read_bytes() == data
        pull = adb("-s", serial, "pull", "/data/local/tmp/g/up.bin", str(tmp_path / "down.bin"))
        assert pull.returncode == 0, pull.stderr
        assert (tmp_path / "down.bin").read_bytes() == data
        escape = adb("-s", serial, "pull", "/data/../../etc/hostname", str(tmp_path / "h"))
        assert escape.returncode != 0 and not (tmp_path / "h").exists()


def test_google_adb_with_an_unknown_key_is_not_authorized(google_adb, tmp_path: Path) -> None:
    adb, _ = google_adb
    trusted = make_key(tmp_path / "trusted")
    with daemon(tmp_path / "root", trusted) as d:
        serial = f"127.0.0.1:{d.port}"
        assert "failed to authenticate" in adb("connect", serial).stdout
        shell = adb("-s", serial, "shell", "echo", "hi", timeout=30)
        assert shell.returncode != 0
        assert ("unauthorized" in shell.stderr or "offline" in shell.stderr) and "hi" not in shell.stdout


# ---------------------------------------------------------------- the serve command


def test_serve_command_runs_until_sigterm(tmp_path: Path, key: Path) -> None:
    exe = Path(sys.executable).with_name("akd-mobile")
    proc = subprocess.Popen(
        [str(exe), "loopback", "serve", "--port", "0", "--root", str(tmp_path / "root"), "--keys", f"{key}.pub"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline()
        port = int(line.split("127.0.0.1:")[1].split()[0])
        dev = _client(port, key)
        assert dev.shell("echo served") == "served\n"
        dev.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


def test_serve_command_bad_keys_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.pub").write_text("not a key\n")
    result = CliRunner().invoke(cli.cli, ["loopback", "serve", "--keys", str(tmp_path / "bad.pub"), "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "not an ADB public key" in result.output
