"""`bench --plot`: time per block, the way the paper's Table 4 groups GoogLeNet (conv1, conv2,
inception_3a ... inception_5b, the classifier), tensor and non-tensor time stacked, the models
side by side on one scale.

Blocks come from the layer names, in execution order:

* a tensor layer (Convolution, InnerProduct, ...) opens or joins the block named by its name's
  first part: the text before the first '/' (GoogLeNet: ``inception_3a/3x3`` -> ``inception_3a``),
  or ``resNX`` for ResNet's ``resNX_branch...`` layers (``res2a_branch2b`` -> ``res2a``; the stem
  is ``conv1``);
* a non-tensor layer joins the block of its own first part when that block exists already
  (``inception_3a/relu_1x1``), else the block of the tensor layer before it (AlexNet's
  ``relu1``/``norm1``/``pool1`` join ``conv1``; GoogLeNet's ``pool1/3x3_s2`` joins ``conv1``,
  ResNet's ``bn2a_branch1`` joins ``res2a``).

Each bar is the sum of the blocks' per-layer median times (what `bench --layers` measures); the
title gives each model's median forward pass and the ratio to the first model, written as
everywhere else ("N.NNx faster").
"""
from __future__ import annotations

import io as _io
import re
from pathlib import Path
from typing import Sequence

from deeprebirth import outputs
from deeprebirth.errors import RebirthError

MODEL_COLORS = ("#1f3b73", "#b8860b", "#2e7d32", "#6a1b9a", "#00838f")
"""One colour per model (tensor time solid, non-tensor time the same colour, light and hatched)."""

_INPUTS = ("Input", "Data", "ImageData", "DummyData", "MemoryData", "HDF5Data", "WindowData")
_RESNET = re.compile(r"^(?:res|bn|scale)(\d+[a-z]\d*)(?:_|$)")


def check_path(path: str | Path) -> Path:
    """Refuse a --plot name that is not a .png, or cannot be written, before any timing."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise RebirthError(f"{path}: {{opt:plot}} writes a PNG image; give a file name ending in .png")
    return outputs.check_output_path(path)


def _first_part(name: str) -> str:
    m = _RESNET.match(name)
    if m:
        return f"res{m.group(1)}"
    return name.split("/", 1)[0]


def blocks(layers: Sequence[dict]) -> list[dict]:
    """Per-layer rows (``name``, ``kind``, ``ms``) -> blocks in order of first appearance:
    ``{"block", "tensor_ms", "non_tensor_ms", "layers"}`` (see the module doc for the rule)."""
    out: dict[str, dict] = {}
    current = None
    for r in layers:
        if r.get("type") in _INPUTS:
            continue     # feeding the net is not part of its time
        part = _first_part(r["name"])
        if r["kind"] == "tensor" or current is None:
            key = part
        else:
            key = part if part in out else current
        block = out.setdefault(key, {"block": key, "tensor_ms": 0.0, "non_tensor_ms": 0.0, "layers": 0})
        block["tensor_ms" if r["kind"] == "tensor" else "non_tensor_ms"] += r["ms"]
        block["layers"] += 1
        if r["kind"] == "tensor":
            current = key
    return list(out.values())


def _merged_order(per_model: Sequence[Sequence[str]]) -> list[str]:
    """One x axis for all models: the first model's blocks, each other block placed after the
    block that precedes it in its own model."""
    order: list[str] = []
    for names in per_model:
        previous = None
        for name in names:
            if name not in order:
                order.insert(order.index(previous) + 1 if previous is not None else 0, name)
            previous = name
    return order


def short_name(label: str) -> str:
    """A model's label as the chart shows it: a path's last part (a folder's name for its
    deploy.prototxt), so that long paths do not crowd the title and legend out."""
    parts = [p for p in label.replace("\\", "/").split("/") if p]
    if len(parts) > 1 and parts[-1] == "deploy.prototxt":
        return parts[-2]
    return parts[-1] if parts else label


def speed_words(ratio: float | None) -> str:
    """A time ratio (this / reference) as the one wording used everywhere: "N.NNx faster",
    "N.NNx slower" or "same speed"."""
    if not ratio:
        return "-"
    if round(ratio, 2) == 1.0:
        return "1.00x (same)"
    return f"{1 / ratio:.2f}x faster" if ratio < 1 else f"{ratio:.2f}x slower"


def make_figure(models: Sequence[dict]):
    """The figure: blocks on x, one stacked bar (tensor + non-tensor ms) per model per block."""
    from matplotlib.figure import Figure  # noqa: PLC0415  (no pyplot: no global state, no GUI)
    from matplotlib.patches import Patch  # noqa: PLC0415

    models = [m for m in models if m["layers"]]
    if not models:
        raise RebirthError("the plot needs per-layer times (run with {opt:layers})")
    grouped = [{b["block"]: b for b in blocks(m["layers"])} for m in models]
    order = _merged_order([list(g) for g in grouped])
    n = len(models)
    width = 0.8 / n
    fig = Figure(figsize=(max(9.0, 0.32 * len(order) * max(2, n) + 2), 5.6), layout="constrained")
    ax = fig.subplots()
    handles = []
    for i, (m, g) in enumerate(zip(models, grouped)):
        color = MODEL_COLORS[i % len(MODEL_COLORS)]
        xs = [k + (i - (n - 1) / 2) * width for k in range(len(order))]
        tensor = [g[b]["tensor_ms"] if b in g else 0.0 for b in order]
        other = [g[b]["non_tensor_ms"] if b in g else 0.0 for b in order]
        ax.bar(xs, tensor, width=width * 0.95, color=color, label=f"{short_name(m['model'])}: tensor layers")
        ax.bar(xs, other, width=width * 0.95, bottom=tensor, color=color, alpha=0.35, hatch="///",
               edgecolor=color, linewidth=0, label=f"{short_name(m['model'])}: non-tensor layers")
        handles += [Patch(color=color, label=f"{short_name(m['model'])}: tensor layers"),
                    Patch(facecolor=color, alpha=0.35, hatch="///", edgecolor=color,
                          label=f"{short_name(m['model'])}: non-tensor layers")]
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels(order, rotation=45 if len(order) > 8 else 0, ha="right" if len(order) > 8 else "center",
                       fontsize=10)
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_ylabel("time per forward pass (ms, median of the runs)", fontsize=10)
    ax.tick_params(axis="y", labelsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(handles=handles, fontsize=9, loc="upper right", ncols=1 if n == 1 else 2)
    ax.set_title(_title(models), fontsize=11, loc="left")
    return fig


def _title(models: Sequence[dict]) -> str:
    ref = models[0]
    parts = []
    for m in models:
        share = m.get("non_tensor_percent_median_run", m.get("non_tensor_percent"))
        text = f"{short_name(m['model'])}: {m['median_ms']:.1f} ms median forward pass"
        if share is not None:
            text += f", {share:.0f} % in non-tensor layers"
        if m is not ref and ref["median_ms"] > 0:
            text += f" ({speed_words(m['median_ms'] / ref['median_ms'])} than {short_name(ref['model'])})"
        parts.append(text)
    return "Time per block (sum of per-layer medians)\n" + "\n".join(parts)


def plot_png(models: Sequence[dict], dpi: int = 100) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415

    fig = make_figure(models)
    FigureCanvasAgg(fig)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_plot(models: Sequence[dict], path: str | Path, inputs: Sequence[str] = ()) -> Path:
    """Write the chart to ``path`` (a .png), atomically, never over an input file."""
    path = check_path(path)
    return outputs.atomic_write(path, plot_png(models), inputs)
