"""Device profiles: TOML files that name a backend and its settings.

A profile is `devices/profiles/<name>.toml` (shipped with the package) or any `.toml` file
given by path. Its keys:

```toml
backend = "local"            # which backend class opens it: a key of BACKENDS
description = "This host"    # optional, shown by `list_profiles`
target_ms = 0.25             # optional: the search's default --target-ms on this device
runs = 30                    # optional: how latencies are measured here (threads, warmup, runs,
min_time_s = 3.0             #   min_time_s: akd_base.measurement.MeasureSettings and its defaults)
phones = ["SERIAL1", "10.0.0.7:5555"]  # optional, adb only: several phones of this model (USB
                             #   serials or TCP addresses); a search on Ray measures on all of them
ray = "10.0.0.5:6379"        # optional: a search on this device runs on this Ray cluster (or
                             #   "auto"), as `search --ray` says; `--ray off` overrides it
timeout_s = 120              # everything else is the backend's own settings
```

`open_device(name_or_path)` loads the profile (or takes a loaded one) and hands it to the
backend class's `from_profile(profile)`. A backend is added by one entry in `BACKENDS`: its name and the
`module:Class` to import (imported only when a profile asks for it).
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from akd_base.errors import DeviceError
from akd_base.measurement import PROFILE_KEYS, MeasureSettings
from devices.base import Device

log = logging.getLogger(__name__)

PROFILE_DIR = Path(__file__).parent / "profiles"

BACKENDS: dict[str, str] = {
    "local": "devices.local:LocalDevice",
    "adb": "devices.adb:AdbDevice",
}


@dataclass(frozen=True)
class Profile:
    """A device profile.

    Attributes:
        name: profile name (the file's stem).
        backend: key of BACKENDS that opens it.
        description: one line for people.
        path: the TOML file it was read from.
        settings: the backend's own settings (every other top-level key).
        target_ms: default latency target of a search on this device, None if unset.
        measure: how latencies are measured on this device: the profile's `threads`,
            `warmup`, `runs` and `min_time_s` over the defaults (commands' options go over these).
        phones: the USB serials or TCP addresses of several phones of this model (`adb`
            only; see `phone_profiles`), empty for one device.
        ray: the Ray cluster a search on this device runs on (`auto` or a head's
            `host:port`), None for in-process.
    """

    name: str
    backend: str
    description: str
    path: Path
    settings: dict[str, Any] = field(default_factory=dict)
    target_ms: float | None = None
    measure: MeasureSettings = MeasureSettings()
    phones: tuple[str, ...] = ()
    ray: str | None = None

    @property
    def argument(self) -> str:
        """What `load_profile` (and a command's device argument) takes for this profile: its
        name when it is the shipped profile of that name, else its file's path."""
        return self.name if self.path == PROFILE_DIR / f"{self.name}.toml" else str(self.path)


def list_profiles() -> list[Profile]:
    """The shipped profiles that parse, sorted by name (a broken one is logged and left out)."""
    profiles = []
    for path in sorted(PROFILE_DIR.glob("*.toml")):
        try:
            profiles.append(load_profile(path))
        except DeviceError as exc:
            log.warning("%s", exc)
    return profiles


def load_profile(name_or_path: str | Path) -> Profile:
    """Read a profile by name (`devices/profiles/<name>.toml`) or by path to a `.toml` file.

    Raises:
        DeviceError: an unknown name (the message lists the known ones), or a missing or
            malformed file.
    """
    path = _resolve(str(name_or_path))
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise DeviceError(f"cannot read device profile {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DeviceError(f"device profile {path} is not valid TOML: {exc}") from None
    backend = data.pop("backend", None)
    if not isinstance(backend, str):
        raise DeviceError(f"device profile {path} needs backend = one of {', '.join(sorted(BACKENDS))}")
    description = data.pop("description", "")
    if not isinstance(description, str):
        raise DeviceError(f"device profile {path}: description must be a string")
    target_ms = data.pop("target_ms", None)
    if target_ms is not None and (isinstance(target_ms, bool) or not isinstance(target_ms, (int, float)) or target_ms <= 0):
        raise DeviceError(f"device profile {path}: target_ms must be a positive number of milliseconds")
    measure = MeasureSettings.from_profile(data, f"device profile {path}")
    phones = data.pop("phones", [])
    if not isinstance(phones, list) or not all(isinstance(p, str) and p.strip() for p in phones) \
            or len(set(phones)) != len(phones):
        raise DeviceError(f"device profile {path}: phones must be a list of distinct USB serials or host:port addresses")
    if phones and backend != "adb":
        raise DeviceError(f"device profile {path}: phones is for the adb backend, not {backend}")
    ray = data.pop("ray", None)
    if ray is not None and not (isinstance(ray, str) and ray.strip()):
        raise DeviceError(f'device profile {path}: ray must be "auto" or a Ray head\'s "host:port"')
    return Profile(
        name=path.stem, backend=backend, description=description, path=path,
        settings={k: v for k, v in data.items() if k not in PROFILE_KEYS},
        target_ms=float(target_ms) if target_ms is not None else None, measure=measure, phones=tuple(phones),
        ray=ray,
    )


def phone_profiles(profile: Profile) -> dict[str | None, Profile]:
    """The devices a profile names, each as a profile of one device, by the Ray resource that
    places it (`phone:SERIAL`, a TCP address standing for the serial): one per entry of
    `phones`, else the profile's own phone. The local backend's device is this host's CPU,
    which no resource names: None."""
    if profile.backend == "local":
        return {None: profile}
    if not profile.phones:
        name = profile.settings.get("address") or profile.settings.get("serial") or "usb"
        return {f"phone:{name}": profile}
    out = {}
    base = {k: v for k, v in profile.settings.items() if k not in ("address", "serial")}
    for phone in profile.phones:
        where = {"address": phone} if _is_address(phone) else {"serial": phone}
        out[f"phone:{phone}"] = dataclasses.replace(profile, settings={**base, **where}, phones=())
    return out


def _is_address(phone: str) -> bool:
    """Whether a phone is named by a TCP `host:port` (else a USB serial)."""
    host, _, port = phone.rpartition(":")
    return bool(host) and port.isdigit()


def open_device(name_or_path: str | Path | Profile) -> Device:
    """The device a profile describes (by name, path or an already loaded Profile; of a profile
    that names several `phones`, the first), ready to `info()` and `measure()`.

    Raises:
        DeviceError: a bad profile (see `load_profile`), an unknown backend, or settings
            its backend rejects.
    """
    profile = name_or_path if isinstance(name_or_path, Profile) else load_profile(name_or_path)
    if profile.phones:  # one device: the first phone (a search on Ray measures on every one)
        profile = next(iter(phone_profiles(profile).values()))
    if profile.backend not in BACKENDS:
        raise DeviceError(
            f"device profile {profile.path}: unknown backend {profile.backend!r}; "
            f"known: {', '.join(sorted(BACKENDS))}"
        )
    module_name, class_name = BACKENDS[profile.backend].split(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class.from_profile(profile)


def _names_a_file(text: str) -> bool:
    """Whether a device argument is a profile file's path rather than a profile name."""
    return text.endswith(".toml") or "/" in text or "\\" in text


def absolute_profile_spec(text: str) -> str:
    """A device argument with a profile file's path made absolute; a profile name stays."""
    return str(Path(text).expanduser().resolve()) if _names_a_file(text) else text


def _resolve(text: str) -> Path:
    if _names_a_file(text):
        path = Path(text).expanduser()
        if not path.is_file():
            raise DeviceError(f"device profile file {path} does not exist")
        return path
    path = PROFILE_DIR / f"{text}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.toml")))
        raise DeviceError(f"unknown device {text!r}; known: {known} (or give a path to a .toml profile)")
    return path
