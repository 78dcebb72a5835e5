"""Phase filtering, as Caffe's Net::FilterNet and StateMeetsRule do it: which layers of a net
Caffe instantiates for a phase, level and stages (a layer's include/exclude NetStateRules)."""
from __future__ import annotations

from typing import Iterable

from deeprebirth.caffe import proto as pb


def _meets(state: "pb.NetState", rule: "pb.NetStateRule") -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_phase(net: "pb.NetParameter", phase: int | None = None, level: int = 0,
                 stages: Iterable[str] = ()) -> "pb.NetParameter":
    """The layers of ``net`` that Caffe instantiates in ``phase`` (default: the net's own state, TEST)."""
    state = pb.NetState()
    state.CopyFrom(net.state)
    if phase is not None:
        state.phase = phase
    if level:
        state.level = level
    state.stage.extend(stages)
    out = pb.NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    for layer in net.layer:
        included = not len(layer.include)
        if any(_meets(state, r) for r in layer.exclude):
            included = False
        if any(_meets(state, r) for r in layer.include):
            included = True
        if included:
            kept = out.layer.add()
            kept.CopyFrom(layer)
            del kept.include[:]
            del kept.exclude[:]
    out.state.phase = state.phase
    return out


def phases_used(net: "pb.NetParameter") -> set[int]:
    """The phases named by any include/exclude rule (empty for a plain deploy net)."""
    return {r.phase for layer in net.layer for r in list(layer.include) + list(layer.exclude)
            if r.HasField("phase")}
