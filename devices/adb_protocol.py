"""ADB wire protocol pieces the loopback daemon needs: message framing, sync framing, RSA auth.

A message is a 24-byte little-endian header (command, arg0, arg1, payload length, payload
checksum, command ^ 0xffffffff) followed by the payload (AOSP `protocol.txt`). Protocol
version 0x01000001 (Android 9 and later) stops checking the checksum; clients of version
0x01000000, such as adb-shell, still check it, so it is always sent.

A host authenticates by signing a 20-byte token with its RSA key: PKCS#1 v1.5 with the token
taken as an already computed SHA-1 digest. Public keys travel in Android's `RSAPublicKey`
struct, base64 encoded (the format of `~/.android/adbkey.pub` and of a device's `adb_keys`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from akd_base.errors import DeviceError

HEADER = struct.Struct("<6I")
SYNC_HEADER = struct.Struct("<4sI")

VERSION = 0x01000001  # the newest version; 0x01000000 clients are served at their version
MAX_PAYLOAD = 1024 * 1024
SYNC_DATA_MAX = 64 * 1024
TOKEN_SIZE = 20

AUTH_TOKEN = 1
AUTH_SIGNATURE = 2
AUTH_RSAPUBLICKEY = 3

_ANDROID_KEY = struct.Struct("<II256s256sI")
_MODULUS_WORDS = 64


def command_id(name: bytes) -> int:
    """Wire value of a four-letter command (`b"CNXN"` -> 0x4e584e43)."""
    return int.from_bytes(name, "little")


CNXN, AUTH, OPEN, OKAY, CLSE, WRTE = (command_id(c) for c in (b"CNXN", b"AUTH", b"OPEN", b"OKAY", b"CLSE", b"WRTE"))


class ProtocolError(Exception):
    """A peer that broke the wire protocol; the connection is dropped."""


@dataclass(frozen=True)
class Header:
    """A decoded message header.

    Attributes:
        command: command wire value (`CNXN`, `WRTE`, ...).
        arg0: first argument.
        arg1: second argument.
        length: payload length in bytes.
    """

    command: int
    arg0: int
    arg1: int
    length: int

    @property
    def name(self) -> str:
        """The command's four letters, for logs."""
        return self.command.to_bytes(4, "little").decode("ascii", "replace")


def checksum(data: bytes) -> int:
    """The header's payload checksum: the sum of the payload's bytes."""
    if len(data) < 4096:
        return sum(data) & 0xFFFFFFFF
    import numpy as np

    return int(np.frombuffer(data, dtype=np.uint8).sum(dtype=np.uint64)) & 0xFFFFFFFF


def pack_message(command: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    """One message (header and payload) ready to write."""
    return HEADER.pack(command, arg0, arg1, len(data), checksum(data), command ^ 0xFFFFFFFF) + data


def unpack_header(raw: bytes) -> Header:
    """Decode a 24-byte header.

    Raises:
        ProtocolError: a bad magic or a payload larger than the protocol allows.
    """
    command, arg0, arg1, length, _, magic = HEADER.unpack(raw)
    if magic != command ^ 0xFFFFFFFF:
        raise ProtocolError(f"bad magic in header {raw.hex()}")
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {length} bytes exceeds {MAX_PAYLOAD}")
    return Header(command, arg0, arg1, length)


def sync_packet(sync_id: bytes, value: int, data: bytes = b"") -> bytes:
    """A sync-service packet: 4-letter id, a 32-bit value (usually the length), then data."""
    return SYNC_HEADER.pack(sync_id, value) + data


# ---------------------------------------------------------------- auth


@dataclass(frozen=True)
class PublicKey:
    """An RSA public key as ADB carries it.

    Attributes:
        modulus: RSA modulus n.
        exponent: RSA public exponent e.
        comment: the `user@host` text after the key, if any.
    """

    modulus: int
    exponent: int
    comment: str = ""

    @property
    def fingerprint(self) -> str:
        """Short hash of the modulus, for logs."""
        return hashlib.sha256(self.modulus.to_bytes(256, "big")).hexdigest()[:16]

    def verifies(self, token: bytes, signature: bytes) -> bool:
        """Whether `signature` is this key's ADB signature of `token`."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

        key = rsa.RSAPublicNumbers(self.exponent, self.modulus).public_key()
        try:
            key.verify(signature, token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))
        except (InvalidSignature, ValueError):
            return False
        return True


def decode_public_key(text: str | bytes) -> PublicKey:
    """Decode one `adbkey.pub` line (base64 `RSAPublicKey` struct, optional ` user@host`).

    Raises:
        DeviceError: not an ADB public key.
    """
    if isinstance(text, bytes):
        text = text.rstrip(b"\0").decode("utf-8", "replace")
    blob, _, comment = text.strip().partition(" ")
    try:
        raw = base64.b64decode(blob, validate=True)
        words, _, n_le, _, exponent = _ANDROID_KEY.unpack(raw)
    except (binascii.Error, struct.error, ValueError) as exc:
        raise DeviceError(
            f"not an ADB public key ({blob[:24]}...): expected an adbkey.pub line, base64 of Android's RSAPublicKey"
        ) from exc
    if words != _MODULUS_WORDS:
        raise DeviceError(f"ADB public key with {words * 32}-bit modulus: only 2048-bit keys are supported")
    return PublicKey(int.from_bytes(n_le, "little"), exponent, comment.strip())


def load_public_keys(path: Path) -> tuple[PublicKey, ...]:
    """Read an `adb_keys`-style file: one `adbkey.pub` line per key (blank lines and `#` skipped).

    Raises:
        DeviceError: a missing or unreadable file, a bad line, or no key at all.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DeviceError(f"cannot read ADB public keys from {path}: {exc}") from exc
    keys = tuple(decode_public_key(ln) for ln in lines if ln.strip() and not ln.lstrip().startswith("#"))
    if not keys:
        raise DeviceError(f"no ADB public key in {path}: put adbkey.pub lines there (akd-mobile devices keygen)")
    return keys
