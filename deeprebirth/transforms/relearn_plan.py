"""Which layers of a slim net are re-learned together, and against what: the *units* of the
paper's Eq. 5, found from the two nets alone (pure graph code: nets in, lists out).

Blobs are *matched* when the teacher has the same blob with the same shape (or when a layer both
nets share reads it in both, at the same bottom, with the same shape: then the teacher's blob of
that name is the match). Cutting the slim net at matched blobs leaves connected components; those
holding a new layer are the units. A unit's inputs are the matched blobs it reads, its outputs the
matched blobs it writes, and the teacher's copies of its outputs are its targets. This needs no
rule-specific knowledge: whatever a rule did, the teacher's feature map is the target wherever both
nets agree again. `rebirth slim` and `rebirth tucker` store the plan in report.json's ``relearn``
section (:func:`plan_report`); `rebirth relearn` (deeprebirth.learning.relearn) carries it out.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

from deeprebirth.caffe import proto as pb
from deeprebirth.caffe.folders import PLAN_VERSION as REPORT_VERSION
from deeprebirth.graph.dag import Graph
from deeprebirth.graph.kinds import DATA_TYPES


@dataclass
class Unit:
    name: str                       # substructure name(s), e.g. "conv1" or "inception_4b+inception_4c"
    layers: list[str]               # the slim net's layers computing the outputs from the inputs, in order
    new: list[str]                  # those that learn
    inputs: list[str]               # blobs of the slim net the unit reads
    teacher_inputs: list[str]       # the teacher's matching blobs
    outputs: list[str]              # blobs of the slim net the unit writes
    targets: list[str]              # the teacher's matching blobs

    def as_dict(self) -> dict:
        return {"name": self.name, "layers": self.layers, "new": self.new, "inputs": self.inputs,
                "teacher_inputs": self.teacher_inputs, "outputs": self.outputs, "targets": self.targets}

    @classmethod
    def from_dict(cls, d: dict) -> "Unit":
        return cls(d["name"], list(d["layers"]), list(d["new"]), list(d["inputs"]), list(d["teacher_inputs"]),
                   list(d["outputs"]), list(d["targets"]))


def _body(net: "pb.NetParameter") -> list["pb.LayerParameter"]:
    return [layer for layer in net.layer if layer.type not in DATA_TYPES]


def blob_matches(teacher: "pb.NetParameter", student: "pb.NetParameter") -> dict[str, str]:
    """Student blob -> teacher blob, for the blobs both nets agree on (see the module doc)."""
    ts = Graph(teacher, strict=False).shapes
    ss = Graph(student, strict=False).shapes
    out = {b: b for b, shape in ss.items() if shape is not None and ts.get(b) == shape}
    theirs = {layer.name: layer for layer in teacher.layer}
    for layer in student.layer:
        other = theirs.get(layer.name)
        if other is None or other.type != layer.type or len(other.bottom) != len(layer.bottom):
            continue
        for b_s, b_t in zip(layer.bottom, other.bottom):
            if b_s not in out and ss.get(b_s) is not None and ss.get(b_s) == ts.get(b_t):
                out[b_s] = b_t
    return out


def plan_units(teacher: "pb.NetParameter", student: "pb.NetParameter", new_layers: Iterable[str],
               substructure_of: dict[str, str] | None = None) -> list[Unit]:
    """The units to re-learn, bottom to top (see the module doc). ``substructure_of`` names a new
    layer's substructure (from the slim report); units are named after theirs."""
    new = set(new_layers)
    matched = blob_matches(teacher, student)
    inputs = set(Graph(student, strict=False).input_blobs)
    layers = _body(student)
    parent = list(range(len(layers)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    touching: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        for b in set(layer.bottom) | set(layer.top):
            if b not in matched and b not in inputs:
                touching.setdefault(b, []).append(i)
    for members in touching.values():
        for j in members[1:]:
            parent[find(j)] = find(members[0])
    groups: dict[int, list[int]] = {}
    for i in range(len(layers)):
        groups.setdefault(find(i), []).append(i)

    units = []
    for idx in sorted(groups.values(), key=min):
        names = [layers[i].name for i in idx]
        if not any(n in new for n in names):
            continue
        written = {t for i in idx for t in layers[i].top}
        read = [b for i in idx for b in layers[i].bottom]
        ins = list(dict.fromkeys(b for b in read if b not in written or _read_before_written(layers, idx, b)))
        outs = [b for b in dict.fromkeys(t for i in idx for t in layers[i].top) if b in matched]
        # In-place layers after the unit that modify one of its outputs belong to it (pycaffe's blob
        # holds the final value, and so does the teacher's).
        last = max(idx)
        extra = [j for j in range(last + 1, len(layers))
                 if list(layers[j].bottom) == list(layers[j].top) and len(layers[j].top) == 1
                 and layers[j].top[0] in outs]
        idx = sorted(set(idx) | set(extra))
        subs = [substructure_of.get(n) for n in names if n in new] if substructure_of else []
        label = "+".join(dict.fromkeys(s for s in subs if s)) or names[0]
        units.append(Unit(label, [layers[i].name for i in idx], [n for n in names if n in new], ins,
                          [matched.get(b, b) for b in ins], outs, [matched[b] for b in outs]))
    return units


def _read_before_written(layers, idx, blob) -> bool:
    first_read = min((i for i in idx if blob in layers[i].bottom), default=None)
    first_write = min((i for i in idx if blob in layers[i].top), default=None)
    return first_read is not None and first_write is not None and first_read <= first_write and \
        not (list(layers[first_read].bottom) == list(layers[first_read].top))


def plan_report(teacher_deploy: str | None, teacher_weights: str | None, teacher: "pb.NetParameter",
                student: "pb.NetParameter", new_layers: Iterable[str], changes: Iterable) -> dict:
    """The ``relearn`` section of a slim report: the teacher's files and the units."""
    substructure_of = {}
    for c in changes:
        for n in list(c.regenerated) + list(c.added):
            substructure_of.setdefault(n, c.substructure)
    units = plan_units(teacher, student, new_layers, substructure_of)
    return {
        "version": REPORT_VERSION,
        "teacher": {"deploy": os.path.abspath(teacher_deploy) if teacher_deploy else None,
                    "weights": os.path.abspath(teacher_weights) if teacher_weights else None},
        "units": [u.as_dict() for u in units],
    }



def selected_units(units: list, only: list[str] | None) -> list:
    """The units (``Unit`` or their dicts) that ``only`` selects by name or by one of the
    substructures a joined name lists (``inception_4b+inception_4c``); all of them without it."""
    def name(u):
        return u["name"] if isinstance(u, dict) else u.name
    return [u for u in units if only is None or name(u) in only or any(part in only for part in name(u).split("+"))]
