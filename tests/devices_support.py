"""Helpers for the device tests: keys, a loopback daemon, loopback profiles, a faulty TCP proxy."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from devices.adb import AdbDevice, AdbSettings
from devices.adb_keys import generate_key
from devices.adb_protocol import load_public_keys
from devices.loopback import BackgroundDaemon, LoopbackConfig


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_key(folder: Path, name: str = "adbkey") -> Path:
    """A fresh ADB key pair in `folder`."""
    return generate_key(folder / name)


@contextlib.contextmanager
def daemon(root: Path, key: Path) -> Iterator[BackgroundDaemon]:
    """A loopback daemon on a free port that trusts `key`."""
    with BackgroundDaemon(LoopbackConfig(root, load_public_keys(Path(f"{key}.pub")), port=0)) as d:
        yield d


def loopback_settings(port: int, key: Path, **overrides: object) -> AdbSettings:
    """The shipped loopback profile's settings, aimed at `port` with `key`."""
    data: dict[str, object] = {
        "address": f"127.0.0.1:{port}",
        "key": str(key),
        "cpu_mask": "none",
        "thermal_limit_c": 95.0,
        "thermal_wait_s": 1.0,
        "connect_timeout_s": 5.0,
        "retries": 2,
        "tools": {
            "tflite": {"path": "builtin:loopback-runner", "kind": "benchmark_model"},
            "pte": {"path": "builtin:loopback-runner", "kind": "benchmark_model"},
        },
    }
    data.update(overrides)
    return AdbSettings.from_dict(data, "test profile")


def loopback_device(port: int, key: Path, **overrides: object) -> AdbDevice:
    return AdbDevice("loopback-test", loopback_settings(port, key, **overrides))


def profile_toml(path: Path, port: int, key: Path) -> Path:
    """A loopback profile file aimed at `port` (for `open_device` and the CLI)."""
    path.write_text(
        'backend = "adb"\n'
        f'address = "127.0.0.1:{port}"\nkey = "{key}"\nruns = 5\nwarmup = 1\ncpu_mask = "none"\n'
        "thermal_limit_c = 95.0\nthermal_wait_s = 1\nconnect_timeout_s = 5\n"
        '[tools.tflite]\npath = "builtin:loopback-runner"\nkind = "benchmark_model"\n'
        '[tools.pte]\npath = "builtin:loopback-runner"\nkind = "benchmark_model"\n'
    )
    return path


@contextlib.contextmanager
def set_up_phone(folder: Path) -> Iterator[Path]:
    """A loopback daemon serving `folder/device` and a profile file aimed at it, its tools
    pushed (`devices setup`): the path of the profile."""
    from devices.manage import setup_device

    key = make_key(folder)
    (folder / "device").mkdir()
    with daemon(folder / "device", key) as d:
        profile = profile_toml(folder / "loopback-test.toml", d.port, key)
        setup_device(str(profile))
        yield profile


class KillingProxy:
    """A TCP proxy to `port` that drops both sides of a connection when the client sends
    `trigger`, for the first `kills` connections that send it (-1: every one)."""

    def __init__(self, port: int, trigger: bytes, kills: int = -1) -> None:
        self.target = port
        self.trigger = trigger
        self.kills_left = kills
        self.connections = 0
        self.kills = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._server.settimeout(0.1)
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, watch: bool) -> None:
        try:
            while data := src.recv(65536):
                if watch and self.trigger in data and self.kills_left != 0:
                    self.kills_left -= 1
                    self.kills += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._stop.set()
        self._server.close()


class SilentServer:
    """Accepts TCP connections and never says a word (a device that never answers)."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._server.settimeout(0.1)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
                self._held.append(conn)
            except (TimeoutError, OSError):
                continue

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        for s in self._held:
            s.close()


class RawClient:
    """A bare ADB client on the wire protocol, to drive several streams by hand."""

    def __init__(self, port: int, key: Path) -> None:
        from devices import adb_protocol as proto
        from devices.adb_keys import load_signer

        self.proto = proto
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.send(proto.CNXN, proto.VERSION, proto.MAX_PAYLOAD, b"host::\0")
        header, token = self.read()
        assert (header.command, header.arg0) == (proto.AUTH, proto.AUTH_TOKEN)
        self.send(proto.AUTH, proto.AUTH_SIGNATURE, 0, load_signer(key).Sign(token))
        header, self.banner = self.read()
        assert header.command == proto.CNXN

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        self.sock.sendall(self.proto.pack_message(command, arg0, arg1, data))

    def _exactly(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionResetError("daemon closed the connection")
            buf += chunk
        return buf

    def read(self):
        header = self.proto.unpack_header(self._exactly(self.proto.HEADER.size))
        return header, self._exactly(header.length) if header.length else b""

    def close(self) -> None:
        self.sock.close()
