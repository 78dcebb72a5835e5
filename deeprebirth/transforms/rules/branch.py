"""Branch slimming (the paper's "Branch Slimming", Figure 4): an inception-like block loses its
non-tensor and 1x1 branches, and its reducers shrink.

A block is a set of parallel branches that leave one blob and are joined again by a Concat on
the channel axis (``branch_groups()``; GoogLeNet's ``inception_3a`` ...). Each branch is a
chain of single-input layers and is one of:

* ``pool``   -- a non-tensor branch: a Pooling on the block input, then (usually) a 1x1
  projection (GoogLeNet's ``pool -> pool_proj``);
* ``1x1``    -- a tensor branch whose convolutions are all 1x1 (GoogLeNet's ``1x1``);
* ``tensor`` -- a tensor branch with a larger kernel, optionally after 1x1 reducers
  (``3x3_reduce -> 3x3``, ``5x5_reduce -> 5x5``);
* ``other``  -- anything else; never touched.

The rewrite, in this order:

1. *non-tensor branch absorption*: every ``pool`` branch is absorbed into a tensor branch whose
   receptive field is at least the pool branch's (the paper: "the picked tensor branch's kernel
   size should be at least the size of the non-tensor branch"); the last convolution of that
   branch gets the pool branch's channels (inception_3a: 5x5 32 -> 64);
2. *tensor-branch slimming*: every ``1x1`` branch is absorbed the same way into a tensor branch
   (inception_3a: 3x3 128 -> 192), as long as the block keeps ``min_branches`` branches (the paper
   reduces 4 branches to 2 and warns that two-branch units lose accuracy when slimmed further);
3. *branch reducing*: the 1x1 reducer feeding the first large-kernel convolution of each branch
   that absorbed a 1x1 branch (or of every tensor branch, with ``reduce_all``) keeps
   ``reduce_ratio`` of its outputs (inception_3a/3x3_reduce: 96 -> 48).

The target of an absorption is the eligible branch nearest in concat order (so the absorbed
channels stay where they were when it is adjacent), then the cheapest one (fewest MACs: "a tensor
unit with relatively small latency"). The absorbed channels are placed on the side where their
branch was. The Concat's channel count is unchanged, so nothing after the block changes.

Layers whose output count or input count changed are *regenerated* (Xavier weights, zero bias;
they keep their names); removed layers lose their weights. Guards: a branch one of whose layers
is also read outside it (or shared by two branches) is never touched; a block with a free
non-tensor or 1x1 branch that no tensor branch can absorb is left alone with a note.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from deeprebirth.graph.dag import Graph, Node
from deeprebirth.graph.geometry import concat_axis, conv_geometry, pool_geometry
from deeprebirth.graph.kinds import ACTIVATIONS, DATA_TYPES
from deeprebirth.graph.model import Model
from deeprebirth.transforms.edit import group_name, regenerate, remove_layers
from deeprebirth.transforms.rules.base import Change, Match, Rule

MAX_CHAIN = 64  # longest branch followed back from a Concat input


@dataclass
class Branch:
    index: int                      # position among the Concat's bottoms
    layers: list[Node]              # in forward order
    out: tuple[str, int]            # the Concat bottom it produces
    channels: int | None = None
    kind: str = "other"             # pool | 1x1 | tensor | other
    rf: tuple[int, int] = (1, 1)    # receptive field of the branch (h, w)
    head: Node | None = None        # last convolution (gets the absorbed channels)
    can_grow: bool = False          # the head may get more outputs
    reducer: Node | None = None     # 1x1 conv feeding the first large-kernel conv
    reduced: Node | None = None     # that large-kernel conv
    pinned: str | None = None       # why the branch must not be touched
    macs: int = 0

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.layers]

    def label(self) -> str:
        core = [n.name for n in self.layers if n.type not in ACTIVATIONS]
        return "+".join(f"'{n}'" for n in core) if core else f"'{self.layers[0].name}'"


@dataclass
class Block:
    name: str
    concat: Node
    source: tuple[str, int]
    branches: list[Branch]
    problems: list[str] = field(default_factory=list)   # block-level reasons to leave it alone


# ----------------------------------------------------------------------------------------------
# Finding and classifying blocks


def _chain(graph: Graph, ref) -> tuple[list, list[Node]]:
    """Refs and layers met walking back from ``ref`` through single-input layers."""
    refs, layers = [ref], []
    while len(layers) < MAX_CHAIN:
        p = graph.producer_of(ref)
        if p is None or len(p.bottoms) != 1 or p.type in DATA_TYPES:
            break
        layers.append(p)
        ref = p.bottoms[0]
        refs.append(ref)
    return refs, layers


def branch_groups(graph: Graph) -> list[dict]:
    """Parallel branches leaving one blob and joined again by a Concat, each branch a chain of
    single-input layers whose blobs have one reader (``name``: the block's name prefix)."""
    out = []
    for node in graph.nodes:
        if node.type != "Concat" or len(node.bottoms) < 2:
            continue
        branches, sources = [], set()
        for b in node.bottoms:
            path, ref = [], b
            while True:
                p = graph.producer_of(ref)
                if p is None or len(p.bottoms) != 1 or p.type in DATA_TYPES:
                    break
                path.append(p)
                ref = p.bottoms[0]
                if len(graph.consumers_of(ref)) > 1:
                    break
            branches.append(list(reversed(path)))
            sources.add(ref)
        if len(sources) == 1 and all(branches):
            names = [n.name for br in branches for n in br] + [node.name]
            out.append({"name": group_name(names, node.name), "source": next(iter(sources))[0],
                        "concat": node.name, "branches": [[n.name for n in br] for br in branches]})
    return out


def find_blocks(graph: Graph) -> list[Block]:
    """Every Concat whose inputs are chains of single-input layers from one common blob.

    Unlike ``branch_groups()`` the chains go on through blobs read by several layers, so a
    block where one branch layer is also read elsewhere is still found (that branch is pinned);
    a block keeps the name ``branch_groups()`` gives it where it finds it."""
    names = {g["concat"]: g["name"] for g in branch_groups(graph)}
    blocks = []
    for node in graph.nodes:
        if node.type != "Concat" or len(node.bottoms) < 2:
            continue
        chains = [_chain(graph, b) for b in node.bottoms]
        others = [set(refs) for refs, _ in chains[1:]]
        source = next((r for r in chains[0][0] if all(r in s for s in others)), None)
        if source is None:
            continue
        branches = []
        for i, ((refs, layers), b) in enumerate(zip(chains, node.bottoms)):
            k = refs.index(source)
            branches.append(Branch(i, list(reversed(layers[:k])), b))
        if not all(br.layers for br in branches):
            continue   # a Concat input that is the source itself (DenseNet-like): no branch
        name = names.get(node.name) or group_name([n for br in branches for n in br.names] + [node.name],
                                                  node.name)
        block = Block(name, node, source, branches)
        _classify(graph, block)
        blocks.append(block)
    return blocks


def _rf_step(rf: list[int], jump: list[int], kernel, stride, dilation=(1, 1)) -> None:
    for d in range(2):
        rf[d] += (kernel[d] - 1) * dilation[d] * jump[d]
        jump[d] *= stride[d]


def _classify(graph: Graph, block: Block) -> None:
    concat = block.concat
    axis = concat_axis(concat.layer)
    shapes = [graph.version_shapes.get(br.out) for br in block.branches]
    if any(s is None for s in shapes):
        block.problems.append("the shapes of its branches are unknown")
    elif any(len(s) != 4 for s in shapes) or axis not in (1, -3):
        block.problems.append(f"its Concat '{concat.name}' does not join 4-D blobs on the channel axis")
    seen: dict[str, int] = {}
    for br in block.branches:
        for n in br.layers:
            seen[n.name] = seen.get(n.name, 0) + 1
    for br, shape in zip(block.branches, shapes):
        br.channels = shape[1] if shape is not None and len(shape) == 4 else None
        br.macs = sum(n.macs for n in br.layers)
        inside = {n.name for n in br.layers}
        for n in br.layers:
            if seen[n.name] > 1:
                br.pinned = f"'{n.name}' is shared with another branch"
                break
            readers = [c for t in n.tops for c in graph.consumers_of(t)
                       if c.name not in inside and not (c is concat and t == br.out)]
            if readers:
                br.pinned = f"the output of '{n.name}' is also read by '{readers[0].name}' outside the branch"
                break
        _kind(graph, br)


def _kind(graph: Graph, br: Branch) -> None:
    core = [n for n in br.layers if n.type not in ACTIVATIONS]
    if not core or any(n.type not in ("Convolution", "Pooling") or len(n.tops) != 1 for n in core):
        return
    rf, jump = [1, 1], [1, 1]
    convs = []
    for n in core:
        shape = graph.version_shapes.get(n.bottoms[0])
        if shape is None or len(shape) != 4:
            return
        if n.type == "Convolution":
            if len(n.layer.bottom) != 1 or n.layer.convolution_param.axis != 1:
                return
            geo = conv_geometry(n.layer, 2)
            _rf_step(rf, jump, geo["kernel"], geo["stride"], geo["dilation"])
            convs.append(n)
        else:
            geo = pool_geometry(n.layer, shape[2:])
            _rf_step(rf, jump, geo["kernel"], geo["stride"])
    br.rf = (rf[0], rf[1])
    if core[0].type == "Pooling":
        br.kind = "pool"
        return
    big = [i for i, c in enumerate(convs) if conv_geometry(c.layer, 2)["kernel"] != [1, 1]]
    br.kind = "tensor" if big else "1x1"
    head = convs[-1]
    br.head = head
    after = br.layers[br.layers.index(head) + 1:]
    br.can_grow = head.layer.convolution_param.group == 1 and \
        all(n.type in ACTIVATIONS or n.type == "Pooling" for n in after)
    if big and big[0] > 0:
        r, nxt = convs[big[0] - 1], convs[big[0]]
        between = br.layers[br.layers.index(r) + 1:br.layers.index(nxt)]
        if r.layer.convolution_param.group == 1 and nxt.layer.convolution_param.group == 1 and \
                all(n.type in ACTIVATIONS for n in between):
            br.reducer, br.reduced = r, nxt


# ----------------------------------------------------------------------------------------------
# Planning


@dataclass
class Plan:
    owner: dict[int, int]                      # branch index -> index of the branch that keeps it
    absorbed: list[tuple[int, int]]            # (absorbed, target) in the order decided
    reduce: dict[int, int]                     # branch index -> new reducer num_output
    notes: list[str]
    problem: str | None = None


def _ge(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] >= b[0] and a[1] >= b[1]


class BranchRule(Rule):
    name = "branch"
    types = frozenset({"Concat"})
    exact = False
    default = True
    order = 40

    def __init__(self, reduce_ratio: float = 0.5, reduce_all: bool = False, min_branches: int = 2,
                 seed: int = 0):
        self.reduce_ratio = reduce_ratio
        self.reduce_all = reduce_all
        self.min_branches = min_branches
        self.seed = seed

    # -- match -------------------------------------------------------------------------------
    def match(self, graph: Graph) -> list[Match]:
        out = []
        for block in find_blocks(graph):
            if not any(br.kind in ("pool", "1x1") for br in block.branches):
                continue   # nothing the paper would absorb (e.g. an already slimmed block)
            layers = [n for br in block.branches for n in br.names] + [block.concat.name]
            out.append(Match(self.name, block.name, layers, {"concat": block.concat.name}))
        return out

    def _block(self, graph: Graph, match: Match) -> Block | None:
        return next((b for b in find_blocks(graph) if b.concat.name == match.data["concat"]), None)

    # -- plan --------------------------------------------------------------------------------
    def plan(self, block: Block) -> Plan:
        plan = Plan({br.index: br.index for br in block.branches}, [], {}, [])
        if block.problems:
            plan.problem = f"block '{block.name}' left alone: {block.problems[0]}"
            return plan
        if not 0 < self.reduce_ratio <= 1:
            plan.problem = f"reduce_ratio must be in (0, 1], got {self.reduce_ratio}"
            return plan
        br = block.branches
        for b in br:
            if b.pinned and b.kind in ("pool", "1x1"):
                plan.notes.append(f"{b.kind} branch {b.label()} not touched: {b.pinned}")
        targets = [b for b in br if b.kind == "tensor" and b.can_grow and not b.pinned]

        def distance(src: Branch, tgt: Branch) -> int:
            return min(abs(src.index - i) for i, o in plan.owner.items() if o == tgt.index)

        def pick(src: Branch) -> Branch | None:
            ok = [t for t in targets if _ge(t.rf, src.rf)]
            if not ok:
                return None
            return min(ok, key=lambda t: (distance(src, t), t.macs, t.index))

        def kernel(b: Branch) -> str:
            return f"{b.rf[0]}x{b.rf[1]}"

        # 1. non-tensor (pooling) branches
        for src in (b for b in br if b.kind == "pool" and not b.pinned):
            tgt = pick(src)
            if tgt is None:
                plan.problem = (f"block '{block.name}' left alone: no tensor branch can absorb the "
                                f"non-tensor branch {src.label()} (its receptive field is {kernel(src)}; "
                                "an absorbing branch needs a kernel at least that large)")
                return plan
            plan.owner[src.index] = tgt.index
            plan.absorbed.append((src.index, tgt.index))
        # 2. 1x1 tensor branches, keeping at least min_branches branches
        for src in (b for b in br if b.kind == "1x1" and not b.pinned):
            tgt = pick(src)
            if tgt is None:
                plan.problem = (f"block '{block.name}' left alone: no tensor branch with a larger kernel "
                                f"can absorb the 1x1 branch {src.label()}")
                return plan
            if len(set(plan.owner.values())) - 1 < self.min_branches:
                plan.notes.append(f"1x1 branch {src.label()} kept: absorbing it would leave fewer than "
                                  f"{self.min_branches} branches")
                continue
            plan.owner[src.index] = tgt.index
            plan.absorbed.append((src.index, tgt.index))
        if not plan.absorbed:
            why = "; ".join(plan.notes) or "no branch can be absorbed"
            plan.problem = f"block '{block.name}' left alone: {why}"
            return plan
        # 3. branch reducing
        grown_by_1x1 = {t for s, t in plan.absorbed if br[s].kind == "1x1"}
        for b in br:
            if plan.owner[b.index] != b.index or b.kind != "tensor" or b.pinned or b.reducer is None:
                continue
            if not (self.reduce_all or b.index in grown_by_1x1):
                continue
            old = b.reducer.layer.convolution_param.num_output
            new = max(1, math.floor(old * self.reduce_ratio + 0.5))
            if new != old:
                plan.reduce[b.index] = new
        return plan

    # -- guards ------------------------------------------------------------------------------
    def guards(self, graph: Graph, match: Match, model: Model) -> str | None:
        block = self._block(graph, match)
        if block is None:
            return f"block '{match.name}' is no longer a branch block"
        return self.plan(block).problem

    # -- rewrite -----------------------------------------------------------------------------
    def rewrite(self, model: Model, graph: Graph, match: Match) -> Change:
        block = self._block(graph, match)
        plan = self.plan(block)
        assert not plan.problem, f"rewrite of a match the guards refuse: {plan.problem}"
        br = block.branches
        layers = {layer.name: layer for layer in model.net.layer}
        change = Change(self.name, block.name, exact=False, notes=list(plan.notes))
        regenerated: list[str] = []

        # absorbed branches go; their targets' heads get their channels
        grow: dict[int, int] = {}
        for s, t in plan.absorbed:
            src, tgt = br[s], br[t]
            change.removed += src.names
            grow[t] = grow.get(t, 0) + src.channels
            kind = "non-tensor" if src.kind == "pool" else "1x1"
            side = "before" if s < t else "after"
            change.notes.append(f"{kind} branch {src.label()} ({src.channels} channels, {src.rf[0]}x{src.rf[1]}) "
                                f"absorbed into '{tgt.head.name}' ({side} its own channels)")
        for t, extra in grow.items():
            head = layers[br[t].head.name]
            old = head.convolution_param.num_output
            head.convolution_param.num_output = old + extra
            regenerated.append(head.name)
            change.notes.append(f"'{head.name}': {old} -> {old + extra} outputs")
        for t, new in plan.reduce.items():
            red = layers[br[t].reducer.name]
            old = red.convolution_param.num_output
            red.convolution_param.num_output = new
            regenerated += [red.name, br[t].reduced.name]
            change.notes.append(f"reducer '{red.name}': {old} -> {new} outputs (ratio {self.reduce_ratio:g})")

        # the Concat joins the kept branches, each at the place of its first channels
        kept = sorted(set(plan.owner.values()), key=lambda o: min(i for i, v in plan.owner.items() if v == o))
        for o in kept:
            members = sorted(i for i, v in plan.owner.items() if v == o)
            if members != list(range(members[0], members[-1] + 1)):
                change.notes.append(f"channels of branches {members} are no longer contiguous: the absorbing "
                                    f"branch '{br[o].head.name}' is not adjacent to all it absorbed "
                                    "(layers after the block see them in a new order)")
        concat = layers[block.concat.name]
        del concat.bottom[:]
        concat.bottom.extend(br[o].out[0] for o in kept)
        if len(kept) == 1 and not br[kept[0]].pinned:
            self._collapse(model, br[kept[0]], concat, change)
        change.notes.append(f"{len(br)} branches -> {len(kept)}; the Concat keeps "
                            f"{sum(b.channels for b in br)} channels")

        gone = set(change.removed)
        remove_layers(model, gone)
        change.regenerated = list(dict.fromkeys(n for n in regenerated if n not in gone))
        if model.weights is not None:
            after = Graph(model.net, strict=False)   # the regenerated layers' new shapes
            for name in change.regenerated:
                regenerate(model, after.node(name), self.seed)
        return change

    def _collapse(self, model: Model, branch: Branch, concat, change: Change) -> None:
        """A one-input Concat is a copy: the branch writes the Concat's top itself."""
        old, new = branch.out[0], concat.top[0]
        for layer in model.net.layer:
            if layer.name in branch.names:
                for field_ in (layer.bottom, layer.top):
                    for i, b in enumerate(field_):
                        if b == old:
                            field_[i] = new
        change.removed.append(concat.name)
        change.notes.append(f"Concat '{concat.name}' removed: its only branch writes '{new}' directly")


RULE = BranchRule()
