"""ADB RSA keys: where they live, generating one, and the signer adb-shell authenticates with.

A key is a PEM (PKCS#8) RSA private key, `adbkey`, next to its public half `adbkey.pub` in
Android's format. The standard key is Google's `~/.android/adbkey` (a phone that already trusts
this computer trusts it); `akd-mobile devices keygen` writes one of the toolkit's own under
`$XDG_CONFIG_HOME/akd-mobile/` (mode 0600) for hosts without one.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

from akd_base.errors import DeviceError

log = logging.getLogger(__name__)

KEY_BITS = 2048


def android_key_path() -> Path:
    """Google adb's key: `$ANDROID_USER_HOME/adbkey` or `~/.android/adbkey`."""
    base = os.environ.get("ANDROID_USER_HOME")
    return Path(base) / "adbkey" if base else Path.home() / ".android" / "adbkey"


def toolkit_key_path() -> Path:
    """The key `akd-mobile devices keygen` writes: `$XDG_CONFIG_HOME/akd-mobile/adbkey`."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "akd-mobile" / "adbkey"


def default_key_path() -> Path:
    """The key to use when a profile names none: Google adb's if present, else the toolkit's.

    Raises:
        DeviceError: neither exists.
    """
    for path in (android_key_path(), toolkit_key_path()):
        if path.is_file():
            return path
    raise DeviceError(
        f"no ADB key at {android_key_path()} or {toolkit_key_path()}: run `akd-mobile devices keygen`"
    )


def generate_key(path: Path | None = None, force: bool = False) -> Path:
    """Write a new 2048-bit RSA key pair: `path` (0600, PKCS#8 PEM) and `path.pub` (Android format).

    Args:
        path: where to write the private key (default: `toolkit_key_path()`).
        force: replace an existing key.

    Returns:
        The private key's path.

    Raises:
        DeviceError: the key exists and `force` is off, or the folder is not writable.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = Path(path) if path is not None else toolkit_key_path()
    if path.exists() and not force:
        raise DeviceError(f"{path} exists: keep it, or pass --force to replace it (phones must then trust the new key)")
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        pub = Path(f"{path}.pub")
        pub.write_text(public_key_line(path))
    except OSError as exc:
        raise DeviceError(f"cannot write an ADB key to {path}: {exc.strerror}") from exc
    log.info("wrote ADB key %s", path)
    return path


def public_key_line(private_key: Path) -> str:
    """The `adbkey.pub` line of a private key: base64 of Android's RSAPublicKey, then `user@host`.

    Raises:
        DeviceError: not a readable PEM RSA private key.
    """
    from adb_shell.auth.keygen import encode_pubkey, get_user_info

    try:
        blob = encode_pubkey(str(private_key))
    except (OSError, ValueError, TypeError) as exc:
        raise DeviceError(f"cannot read the ADB private key {private_key}: {exc}") from exc
    return base64.b64encode(blob).decode() + get_user_info() + "\n"


def load_signer(path: Path | None = None):
    """adb-shell's `PythonRSASigner` for the key at `path` (default: `default_key_path()`).

    The public half is read from `path.pub`, or derived from the private key when that is missing.

    Raises:
        DeviceError: a missing or unreadable key.
    """
    from adb_shell.auth.sign_pythonrsa import PythonRSASigner

    path = Path(path).expanduser() if path is not None else default_key_path()
    pub_path = Path(f"{path}.pub")
    try:
        priv = path.read_text()
        pub = pub_path.read_text() if pub_path.is_file() else public_key_line(path)
        return PythonRSASigner(pub, priv)
    except (OSError, ValueError, IndexError) as exc:
        raise DeviceError(
            f"cannot load the ADB key {path}: {exc}; use a PKCS#8 PEM key or run `akd-mobile devices keygen`"
        ) from exc
