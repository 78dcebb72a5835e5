"""Device names (``--device``) to Device objects."""
from __future__ import annotations

from deeprebirth.errors import RebirthError
from deeprebirth.runtime.devices.base import Device

#: Every name ``--device`` knows, with what each one is.
DEVICES = {
    "cpu": "this machine's CPU, through pycaffe",
    "host": "this machine, running the timing program rebirth-time (C++) built against the engine's Caffe",
    "adb[:SERIAL]": "an Android phone over adb, running rebirth-time built with the NDK (scripts/build_device.sh)",
    "ssh://[user@]host": "a Linux board (e.g. a Raspberry Pi) over ssh, running a cross-built rebirth-time",
    "qemu-aarch64": "the cross-built aarch64 rebirth-time under qemu-user here (checks the build; not real timings)",
}
#: With --engine ncnn, every device but cpu runs rebirth-time-ncnn (scripts/build_device.sh --engine ncnn).


def get_device(name: str, threads: int | None = None, cpu_mask: str | None = None,
               cooldown: float = 0.0, engine: str = "caffe") -> Device:
    """The Device called ``name``; a RebirthError for unknown names. ``threads`` (BLAS threads),
    ``cpu_mask`` (taskset) and ``cooldown`` (seconds between models' turns) apply to the devices
    that run the timing program; the cpu device takes ``cooldown`` in bench.measure. ``engine``
    ncnn: those devices run rebirth-time-ncnn on the ncnn export (``threads``: ncnn's threads;
    ncnn on --device cpu is engines.get_device("ncnn"))."""
    key = (name or "").strip()
    if key.lower() == "cpu":
        if threads or cpu_mask:
            raise RebirthError("{opt:threads} and {opt:cpu_mask} apply to devices that run rebirth-time (host, adb, "
                               "ssh, qemu-aarch64); for {opt:device} cpu set OPENBLAS_NUM_THREADS and use taskset")
        from deeprebirth.runtime.devices.cpu import CpuDevice  # noqa: PLC0415
        return CpuDevice()
    from deeprebirth.runtime.devices.remote import make_device  # noqa: PLC0415

    dev = make_device(key, threads, cpu_mask, cooldown, engine)
    if dev is not None:
        return dev
    known = ", ".join(DEVICES)
    raise RebirthError(f"unknown device '{name}' (known devices: {known})")
