"""A target: the engine and the device a net is meant to run on (``--engine``, ``--device``), as the
bench Device that times nets there. `rebirth plan` and `accelerate` measure on it."""
from __future__ import annotations

from deeprebirth.errors import RebirthError
from deeprebirth.runtime import engines
from deeprebirth.runtime.devices import get_device


def device_for(engine: str = "caffe", device: str = "cpu", threads: int | None = None,
               cpu_mask: str | None = None, cooldown: float = 0.0):
    """The Device that times forward passes with ``engine`` on ``device``: pycaffe or the
    rebirth-time program for caffe; the engine's Python binding here (``device`` cpu) for
    onnxruntime, ncnn and mnn; rebirth-time-ncnn for ncnn elsewhere. ``cpu_mask`` and
    ``cooldown`` apply to the devices that run a timing program (devices.get_device)."""
    engine = engines.check_engine(engine)
    on_cpu = (device or "cpu").strip().lower() == "cpu"
    if engine == "caffe":
        return get_device(device, threads, cpu_mask, cooldown)
    if on_cpu:
        return engines.get_device(engine, threads)
    if engine != "ncnn":
        raise RebirthError(f"{{opt:engine}} {engine} runs on this machine ({{opt:device}} cpu); other devices run "
                           "Caffe's rebirth-time, or ncnn's rebirth-time-ncnn with {opt:engine} ncnn")
    return get_device(device, threads, cpu_mask, cooldown, engine)


def describe(engine: str, device: str) -> str:
    return f"{engines.check_engine(engine)} on {device or 'cpu'}"
