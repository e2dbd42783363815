"""What the `devices list` and `devices setup` commands do: list profiles and whether each
answers, push a profile's benchmark tools (`devices check` is `akd_mobile.device_check`: it
exports a model, which no backend does)."""

from __future__ import annotations

from typing import Any

from akd_base.errors import AkdError, DeviceError




def list_devices() -> list[dict[str, Any]]:
    """Every shipped profile with its backend and whether the device answers now (and why not)."""
    from devices.profiles import list_profiles, open_device

    rows = []
    for profile in list_profiles():
        row: dict[str, Any] = {"name": profile.name, "backend": profile.backend, "description": profile.description}
        try:
            device = open_device(profile)
            status = getattr(device, "status", None)
            if status is not None:
                row["answers"], row["reason"] = status()
            else:
                device.info()
                row["answers"], row["reason"] = True, ""
        except AkdError as exc:
            row["answers"], row["reason"] = False, str(exc)
        rows.append(row)
    return rows


def setup_device(name: str) -> list[dict[str, Any]]:
    """Push the benchmark tools of profile `name` to its device, or to each of its `phones`
    (see `AdbDevice.setup`).

    Raises:
        DeviceError: a profile whose backend has no tools to set up, or a device failure.
    """
    from devices.profiles import load_profile, open_device, phone_profiles

    pushed = []
    for profile in phone_profiles(load_profile(name)).values():
        device = open_device(profile)
        setup = getattr(device, "setup", None)
        if setup is None:
            raise DeviceError(f"device {device.name} runs models in-process: it has no tools to set up")
        pushed.extend(setup())
    return pushed
