"""Device names (``--device``) to Device objects."""
from __future__ import annotations

from ..errors import RebirthError
from .base import Device

#: Every name ``--device`` will know, with what each one is.
DEVICES = {
    "cpu": "this machine's CPU, through pycaffe",
    "adb": "an Android phone over adb, running a Caffe binary built with the NDK",
}
NOT_IMPLEMENTED = {"adb"}


def get_device(name: str) -> Device:
    """The Device called ``name``; a RebirthError for planned and unknown names."""
    key = (name or "").strip().lower()
    if key == "cpu":
        from .cpu import CpuDevice  # noqa: PLC0415
        return CpuDevice()
    if key in NOT_IMPLEMENTED:
        raise RebirthError(f"device '{key}' ({DEVICES[key]}) is not implemented yet; use --device cpu")
    known = ", ".join(DEVICES)
    raise RebirthError(f"unknown device '{name}' (known devices: {known})")
