"""The loopback device: an ADB daemon on 127.0.0.1 that serves a sandbox folder of this host.

It speaks the real ADB wire protocol (`devices.adb_protocol`): CNXN, AUTH with RSA (only the
public keys it was given; an unknown key is refused and the connection dropped, where a phone
would ask its user), OPEN of the `shell:` / `exec:` services and of `sync:` (STAT, LIST, SEND,
RECV, DONE, QUIT), several streams at once, and a clean shutdown. Google's `adb` and adb-shell
both work against it, so CI runs the phone path (push, shell, parse, pull) with no phone.

The sandbox folder is the device's filesystem root. The file service confines every path to
it: `..`, and symlinks that lead outside, are refused with FAIL. Shell commands run with
`/bin/sh` in the sandbox folder, with the device paths `/data`, `/sdcard` and `/storage`
rewritten into the sandbox and the sandbox's `system/bin` (holding a `getprop`) first in PATH.
A shell command is not confined: it runs as the user who started the daemon, which is why the
daemon binds 127.0.0.1 only and accepts only the keys it was given.

It is a test device: its latencies are this host's, never a substitute for a phone's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import re
import secrets
import shlex
import signal
import stat
import struct
import tempfile
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from akd_base.errors import DeviceError
from devices import adb_protocol as proto

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_PORT = 15555
AUTH_TIMEOUT_S = 30.0
MAX_AUTH_FAILURES = 10
MAPPED_DIRS = ("data", "sdcard", "storage")
_SAFE_ROOT = re.compile(r"^[\w./+@:-]+$")
_DEVICE_PATH = re.compile(r"(?<![\w./~-])/(?:%s)(?=/|$|[\s;&|'\")<>])" % "|".join(MAPPED_DIRS))


class SandboxError(Exception):
    """A device path that would leave the sandbox, or that is not valid."""


class Sandbox:
    """A host folder served as a device's filesystem root."""

    def __init__(self, root: Path) -> None:
        """Serve `root` (created when missing).

        Raises:
            DeviceError: a root whose path holds characters a shell command would mangle.
        """
        root = Path(root).expanduser().resolve()
        if not _SAFE_ROOT.match(str(root)):
            raise DeviceError(f"loopback root {root} holds spaces or shell characters: pick a plain path")
        root.mkdir(parents=True, exist_ok=True)
        self.root = root

    def resolve(self, device_path: str) -> Path:
        """Host path of `device_path`, symlinks resolved, guaranteed inside the sandbox.

        Raises:
            SandboxError: `..` in the path, a NUL byte, or a symlink that leads outside.
        """
        if "\0" in device_path:
            raise SandboxError("NUL byte in path")
        parts = PurePosixPath("/" + device_path.lstrip("/")).parts[1:]
        if ".." in parts:
            raise SandboxError(f"'..' is not allowed in device paths: {device_path}")
        real = Path(os.path.realpath(self.root.joinpath(*parts)))
        if real != self.root and self.root not in real.parents:
            raise SandboxError(f"{device_path} leads outside the device filesystem")
        return real

    def shell_command(self, command: str) -> str:
        """`command` with device paths under /data, /sdcard and /storage moved into the sandbox."""
        return _DEVICE_PATH.sub(lambda m: f"{self.root}{m.group(0)}", command)

    def provision(self) -> None:
        """Create the device folders and a `getprop` that describes this host as a device."""
        for d in ("data/local/tmp", "sdcard", "system/bin"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        props = "\n".join(f"[{k}]: [{v}]" for k, v in sorted(device_properties().items()))
        getprop = self.root / "system/bin/getprop"
        getprop.write_text(
            "#!/bin/sh\n# Android's getprop, for the akd-mobile loopback device.\n"
            f"props={shlex.quote(props)}\n"
            'if [ $# -eq 0 ]; then printf "%s\\n" "$props"; exit 0; fi\n'
            'printf "%s\\n" "$props" | while IFS= read -r line; do\n'
            '  case "$line" in "[$1]: ["*) v=${line#*: [}; printf "%s\\n" "${v%]}";; esac\n'
            "done\n"
        )
        getprop.chmod(0o755)


def device_properties() -> dict[str, str]:
    """The Android properties the loopback device reports: this host's CPU as the SoC."""
    from importlib import metadata

    soc = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                soc = line.split(":", 1)[1].strip()
                break
    runtimes = {}
    for name, dist in (("litert", "ai-edge-litert"), ("executorch", "executorch")):
        with contextlib.suppress(metadata.PackageNotFoundError):
            runtimes[f"akd.runtime.{name}"] = metadata.version(dist)
    return {
        **runtimes,
        "ro.product.model": "akd-loopback",
        "ro.product.manufacturer": "akd-mobile",
        "ro.product.name": "akd_loopback",
        "ro.product.cpu.abi": platform.machine(),
        "ro.soc.model": soc,
        "ro.build.fingerprint": f"akd-mobile/loopback/{platform.system()}-{platform.release()}:{metadata.version('akd-mobile')}",
    }


# ---------------------------------------------------------------- streams


class _Stream(ABC):
    """One open service on a connection: sends WRTE one at a time, each after the peer's OKAY."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self._ready = asyncio.Event()
        self._ready.set()
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    async def send(self, data: bytes) -> None:
        """Write `data` to the peer in messages of at most the negotiated size."""
        view = memoryview(data)
        for start in range(0, len(data), self.conn.maxdata):
            await self._ready.wait()
            if self.closed:
                raise ConnectionResetError("stream closed by the peer")
            self._ready.clear()
            self.conn.write(proto.WRTE, self.local_id, self.remote_id, bytes(view[start : start + self.conn.maxdata]))
            await self.conn.drain()

    def on_okay(self) -> None:
        self._ready.set()

    def on_data(self, data: bytes) -> None:
        """Data from the peer; the default acknowledges and drops it."""
        self.conn.write(proto.OKAY, self.local_id, self.remote_id)

    @abstractmethod
    async def run(self) -> None:
        """Serve the stream until it ends; then `finish()`."""

    async def finish(self) -> None:
        """Close from our side: CLSE to the peer."""
        if not self.closed:
            self.closed = True
            self.conn.streams.pop(self.local_id, None)
            self.conn.write(proto.CLSE, self.local_id, self.remote_id)
            with contextlib.suppress(ConnectionError):
                await self.conn.drain()

    def on_peer_close(self) -> None:
        """The peer closed the stream: stop the work behind it."""
        self.closed = True
        self._ready.set()
        if self.task is not None and not self.task.done():
            self.task.cancel()


class _ShellStream(_Stream):
    """`shell:CMD` / `exec:CMD`: CMD under /bin/sh in the sandbox, stdout and stderr merged."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int, command: str) -> None:
        super().__init__(conn, local_id, remote_id)
        self.command = command
        self.proc: asyncio.subprocess.Process | None = None

    def on_data(self, data: bytes) -> None:
        if self.proc is not None and self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.write(data)
        super().on_data(data)

    async def run(self) -> None:
        sandbox = self.conn.daemon.sandbox
        argv = ["/bin/sh", "-c", sandbox.shell_command(self.command)] if self.command else ["/bin/sh"]
        env = dict(os.environ, PATH=f"{sandbox.root / 'system/bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}")
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=sandbox.root,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            assert self.proc.stdout is not None
            while chunk := await self.proc.stdout.read(self.conn.maxdata):
                await self.send(chunk)
            await self.proc.wait()
        finally:
            if self.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()
        await self.finish()


class _SyncStream(_Stream):
    """`sync:`: the file service (AOSP SYNC.TXT, version 1 requests)."""

    _ACK_BACKLOG = proto.MAX_PAYLOAD

    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        super().__init__(conn, local_id, remote_id)
        self._inbox = bytearray()
        self._arrived = asyncio.Event()
        self._ack_pending = False

    def on_data(self, data: bytes) -> None:
        self._inbox += data
        self._arrived.set()
        if len(self._inbox) <= self._ACK_BACKLOG:
            super().on_data(data)
        else:
            self._ack_pending = True

    async def _read(self, size: int) -> bytes:
        while len(self._inbox) < size:
            if self.closed:
                raise asyncio.IncompleteReadError(bytes(self._inbox), size)
            self._arrived.clear()
            await self._arrived.wait()
        out = bytes(self._inbox[:size])
        del self._inbox[:size]
        if self._ack_pending and len(self._inbox) <= self._ACK_BACKLOG:
            self._ack_pending = False
            self.conn.write(proto.OKAY, self.local_id, self.remote_id)
        return out

    def on_peer_close(self) -> None:
        self._arrived.set()
        super().on_peer_close()

    async def _request(self) -> tuple[bytes, int]:
        return proto.SYNC_HEADER.unpack(await self._read(proto.SYNC_HEADER.size))

    async def run(self) -> None:
        handlers = {b"STAT": self._stat, b"LIST": self._list, b"SEND": self._send_file, b"RECV": self._recv_file}
        try:
            while True:
                sync_id, length = await self._request()
                if sync_id == b"QUIT":
                    break
                handler = handlers.get(sync_id)
                if handler is None or length > 4096:
                    await self._fail(f"unsupported sync request {sync_id!r}")
                    break
                path = (await self._read(length)).decode("utf-8", "surrogateescape")
                await handler(path)
        except asyncio.IncompleteReadError:
            return
        await self.finish()

    async def _fail(self, message: str) -> None:
        data = message.encode()
        await self.send(proto.sync_packet(b"FAIL", len(data), data))

    async def _stat(self, path: str) -> None:
        try:
            st = os.lstat(self.conn.daemon.sandbox.resolve(path))
            fields = (st.st_mode, st.st_size, int(st.st_mtime))
        except (SandboxError, OSError):
            fields = (0, 0, 0)
        await self.send(b"STAT" + struct.pack("<3I", *(f & 0xFFFFFFFF for f in fields)))

    async def _list(self, path: str) -> None:
        out = bytearray()
        try:
            folder = self.conn.daemon.sandbox.resolve(path)
            with os.scandir(folder) as entries:
                for entry in entries:
                    st = entry.stat(follow_symlinks=False)
                    name = os.fsencode(entry.name)
                    out += b"DENT" + struct.pack(
                        "<4I", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF, int(st.st_mtime) & 0xFFFFFFFF, len(name)
                    )
                    out += name
        except (SandboxError, OSError) as exc:
            log.info("LIST %s: %s", path, exc)
        out += b"DONE" + bytes(16)
        await self.send(bytes(out))

    async def _send_file(self, spec: str) -> None:
        path, _, mode_text = spec.rpartition(",")
        error, out, partial = None, None, None
        try:
            mode = int(mode_text) if mode_text.isdigit() else stat.S_IFREG | 0o644
            if not stat.S_ISREG(mode):
                raise SandboxError(f"only regular files can be pushed, not mode {mode:o}")
            target = self.conn.daemon.sandbox.resolve(path)
            if target.is_dir():
                raise SandboxError(f"{path} is a directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=".akd-partial-", dir=target.parent)
            out, partial = os.fdopen(fd, "wb"), Path(name)
        except (SandboxError, OSError) as exc:
            error = str(exc)
        try:
            while True:
                sync_id, value = await self._request()
                if sync_id == b"DATA":
                    if value > proto.SYNC_DATA_MAX:
                        raise proto.ProtocolError(f"sync DATA of {value} bytes")
                    chunk = await self._read(value)
                    if out is not None:
                        out.write(chunk)
                elif sync_id == b"DONE":
                    break
                else:
                    error = error or f"unexpected {sync_id!r} during SEND"
                    break
            if out is not None:
                out.close()
                if error is None:
                    os.chmod(partial, stat.S_IMODE(mode))
                    os.utime(partial, (value, value))
                    os.replace(partial, target)
        finally:
            if out is not None:
                out.close()
                if partial.exists():
                    partial.unlink()
        if error is not None:
            await self._fail(error)
        else:
            await self.send(proto.sync_packet(b"OKAY", 0))

    async def _recv_file(self, path: str) -> None:
        try:
            source = self.conn.daemon.sandbox.resolve(path)
            f = open(source, "rb")  # noqa: SIM115 - closed below
        except (SandboxError, OSError) as exc:
            await self._fail(str(exc))
            return
        with f:
            batch = bytearray()
            while chunk := f.read(proto.SYNC_DATA_MAX):
                batch += proto.sync_packet(b"DATA", len(chunk), chunk)
                if len(batch) + proto.SYNC_DATA_MAX + 8 > self.conn.maxdata:
                    await self.send(bytes(batch))
                    batch.clear()
        batch += proto.sync_packet(b"DONE", 0)
        await self.send(bytes(batch))


# ---------------------------------------------------------------- connections


class _Connection:
    """One client: handshake, then a table of open streams."""

    def __init__(self, daemon: LoopbackDaemon, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.daemon = daemon
        self.reader = reader
        self.writer = writer
        self.maxdata = 4096
        self.authenticated = False
        self.streams: dict[int, _Stream] = {}
        self._next_id = 1
        self._token = b""
        self._version = proto.VERSION
        self._auth_failures = 0

    def write(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        self.writer.write(proto.pack_message(command, arg0, arg1, data))

    async def drain(self) -> None:
        await self.writer.drain()

    async def run(self) -> None:
        peer = self.writer.get_extra_info("peername")
        try:
            await asyncio.wait_for(self._handshake(), AUTH_TIMEOUT_S)
            log.info("client %s authenticated", peer)
            while True:
                header, data = await self._read_message()
                self._dispatch(header, data)
                await self.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, proto.ProtocolError) as exc:
            log.info("client %s gone: %s", peer, exc or type(exc).__name__)
        finally:
            await self.close()

    async def close(self) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        for s in streams:
            s.on_peer_close()
        tasks = [s.task for s in streams if s.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()

    async def _read_message(self) -> tuple[proto.Header, bytes]:
        header = proto.unpack_header(await self.reader.readexactly(proto.HEADER.size))
        data = await self.reader.readexactly(header.length) if header.length else b""
        return header, data

    async def _handshake(self) -> None:
        while True:
            header, data = await self._read_message()
            if header.command == proto.CNXN:
                self.maxdata = max(4096, min(header.arg1, proto.MAX_PAYLOAD))
                self._version = min(header.arg0, proto.VERSION)
                self._send_token()
            elif header.command == proto.AUTH and self._token:
                if header.arg0 == proto.AUTH_SIGNATURE:
                    if any(k.verifies(self._token, data) for k in self.daemon.keys):
                        self.write(proto.CNXN, self._version, self.maxdata, self.daemon.banner)
                        self.authenticated = True
                        return
                    self._auth_failures += 1
                    if self._auth_failures >= MAX_AUTH_FAILURES:
                        raise proto.ProtocolError("too many failed signatures")
                    self._send_token()
                elif header.arg0 == proto.AUTH_RSAPUBLICKEY:
                    try:
                        key = proto.decode_public_key(data)
                        who = f"{key.fingerprint} ({key.comment})"
                    except DeviceError:
                        who = "(malformed)"
                    log.warning("refused ADB key %s: not among the daemon's keys", who)
                    raise proto.ProtocolError("unknown key")
            else:
                raise proto.ProtocolError(f"{header.name} before authentication")
            await self.drain()

    def _send_token(self) -> None:
        self._token = secrets.token_bytes(proto.TOKEN_SIZE)
        self.write(proto.AUTH, proto.AUTH_TOKEN, 0, self._token)

    def _dispatch(self, header: proto.Header, data: bytes) -> None:
        cmd = header.command
        if cmd == proto.OPEN:
            self._open(header.arg0, data.rstrip(b"\0").decode("utf-8", "surrogateescape"))
            return
        stream = self.streams.get(header.arg1)
        if cmd == proto.WRTE:
            if stream is None:
                self.write(proto.CLSE, 0, header.arg0)
            else:
                stream.on_data(data)
        elif cmd == proto.OKAY and stream is not None:
            stream.on_okay()
        elif cmd == proto.CLSE and stream is not None:
            self.streams.pop(header.arg1, None)
            if not stream.closed:
                self.write(proto.CLSE, stream.local_id, stream.remote_id)
            stream.on_peer_close()

    def _open(self, remote_id: int, service: str) -> None:
        local_id = self._next_id
        self._next_id += 1
        kind, _, arg = service.partition(":")
        if kind in ("shell", "exec"):
            stream: _Stream = _ShellStream(self, local_id, remote_id, arg)
        elif service == "sync:":
            stream = _SyncStream(self, local_id, remote_id)
        else:
            log.info("refused service %r", service)
            self.write(proto.CLSE, 0, remote_id)
            return
        self.streams[local_id] = stream
        self.write(proto.OKAY, local_id, remote_id)
        stream.task = asyncio.get_running_loop().create_task(self._run_stream(stream))

    async def _run_stream(self, stream: _Stream) -> None:
        try:
            await stream.run()
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError, proto.ProtocolError) as exc:
            log.info("stream %d ended: %s", stream.local_id, exc)
            with contextlib.suppress(ConnectionError, OSError):
                await stream.finish()


# ---------------------------------------------------------------- daemon


@dataclass(frozen=True)
class LoopbackConfig:
    """How a loopback daemon serves.

    Attributes:
        root: the sandbox folder served as the device's filesystem.
        keys: the public keys allowed to connect.
        port: TCP port on 127.0.0.1 (0 picks a free one).
    """

    root: Path
    keys: tuple[proto.PublicKey, ...]
    port: int = DEFAULT_PORT


class LoopbackDaemon:
    """The ADB daemon: one asyncio server, one task per client, one task per stream."""

    def __init__(self, config: LoopbackConfig) -> None:
        """Prepare to serve `config.root`; `start()` opens the port.

        Raises:
            DeviceError: no keys, or an unusable root.
        """
        if not config.keys:
            raise DeviceError("the loopback daemon needs at least one ADB public key (--keys)")
        self.config = config
        self.keys = config.keys
        self.sandbox = Sandbox(config.root)
        props = device_properties()
        self.banner = (
            f"device::ro.product.name={props['ro.product.name']};ro.product.model={props['ro.product.model']};"
            "ro.product.device=akd_loopback;features=fixed_push_mkdir\0"
        ).encode()
        self.port = config.port
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen on 127.0.0.1 and return the port.

        Raises:
            DeviceError: the port is taken.
        """
        self.sandbox.provision()
        try:
            self._server = await asyncio.start_server(self._client, HOST, self.config.port)
        except OSError as exc:
            raise DeviceError(f"cannot listen on {HOST}:{self.config.port}: {exc.strerror}; pick another --port") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("loopback ADB daemon on %s:%d serving %s", HOST, self.port, self.sandbox.root)
        return self.port

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await _Connection(self, reader, writer).run()
        except asyncio.CancelledError:
            log.info("client dropped: the daemon is stopping")
        except Exception:  # one client's failure must not stop the daemon
            log.exception("client handler failed; connection dropped")
        finally:
            self._clients.discard(task)

    async def stop(self) -> None:
        """Stop listening, end every client and kill the commands they started."""
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


def serve(config: LoopbackConfig, ready: threading.Event | None = None) -> None:
    """Run a daemon in the foreground until SIGINT or SIGTERM, then shut it down cleanly."""

    async def main() -> None:
        daemon = LoopbackDaemon(config)
        await daemon.start()
        print(f"loopback ADB device on {HOST}:{daemon.port} (root {daemon.sandbox.root}); Ctrl-C stops it", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        await stop.wait()
        await daemon.stop()

    asyncio.run(main())


class BackgroundDaemon:
    """A daemon on its own thread and event loop, for tests and benchmarks (a context manager)."""

    def __init__(self, config: LoopbackConfig) -> None:
        self.config = config
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._daemon: LoopbackDaemon | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> BackgroundDaemon:
        self._loop = asyncio.new_event_loop()
        self._daemon = LoopbackDaemon(self.config)
        self._thread = threading.Thread(target=self._loop.run_forever, name="akd-loopback", daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._daemon.start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._daemon is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(self._daemon.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    @property
    def root(self) -> Path:
        """The sandbox folder."""
        assert self._daemon is not None
        return self._daemon.sandbox.root
