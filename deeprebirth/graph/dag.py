"""The layer DAG of a Caffe net: producers and consumers, in-place chains, order; each layer's
shapes from Caffe's shape rules (``shapes``), the net's costs from ``costs``.

A blob name can be written several times (in-place layers: ReLU, BatchNorm, Scale, Dropout with
top == bottom). Each write makes a new *version* of the blob, so the graph is a true DAG over
``(name, version)`` references while Caffe still allocates one blob per name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from deeprebirth.caffe import proto as pb
from deeprebirth.errors import RebirthError
from deeprebirth.graph import costs
from deeprebirth.graph.kinds import DATA_TYPES, kind_of
from deeprebirth.graph.shapes import SHAPE_FNS, Shape, check_blob, count

BlobRef = tuple[str, int]  # (blob name, version)


@dataclass
class Node:
    index: int
    layer: "pb.LayerParameter"
    bottoms: list[BlobRef] = field(default_factory=list)
    tops: list[BlobRef] = field(default_factory=list)
    top_shapes: list[Shape | None] = field(default_factory=list)
    param_shapes: list[Shape] = field(default_factory=list)
    macs: int = 0

    @property
    def name(self) -> str:
        return self.layer.name

    @property
    def type(self) -> str:
        return self.layer.type

    @property
    def kind(self) -> str:
        return kind_of(self.layer.type)

    @property
    def params(self) -> int:
        return sum(count(s) for s in self.param_shapes)

    @property
    def output_bytes(self) -> int:
        return costs.blob_bytes(self.top_shapes)

    @property
    def in_place(self) -> bool:
        return bool(self.tops) and all(t[0] in {b[0] for b in self.bottoms} for t in self.tops)

    def __repr__(self) -> str:
        return f"Node({self.name!r}, {self.type!r})"


class Graph:
    """The DAG of a (phase-filtered) NetParameter, with shapes and costs.

    ``input_shapes`` overrides the shape of named input/data blobs; ``batch`` replaces the batch
    dimension of every input.

    A layer of a type no shape rule knows is a *barrier*: its tops, and everything computed from
    them, get unknown shapes (``None``), a note in ``warnings`` names it, and rules leave every layer
    with unknown shapes alone (``unknown_cause`` names the barrier when a shape is needed). With
    ``strict=False`` a known layer whose shape cannot be inferred is treated the same way instead
    of raising.
    """

    def __init__(self, net: "pb.NetParameter", batch: int | None = None,
                 input_shapes: dict[str, Shape] | None = None, strict: bool = True):
        self.net = net
        self.batch = batch
        self.strict = strict
        self.nodes: list[Node] = []
        self.by_name: dict[str, Node] = {}
        self.producer: dict[BlobRef, Node | None] = {}
        self.consumers: dict[BlobRef, list[Node]] = {}
        self.version_shapes: dict[BlobRef, Shape | None] = {}
        self.inputs: list[str] = []
        self.notes: list[str] = []
        self.barriers: list[Node] = []  # layers of unknown type
        self.warnings: list[str] = []   # what the user should be told (the cli prints them)
        self._overrides = dict(input_shapes or {})
        self._build()
        self._infer_shapes()

    # -- structure -------------------------------------------------------------------------
    def _build(self) -> None:
        latest: dict[str, int] = {}
        for name, shape in self._net_inputs():
            self.inputs.append(name)
            ref = (name, 0)
            latest[name] = 0
            self.producer[ref] = None
            self.consumers[ref] = []
            self.version_shapes[ref] = shape
        later_producers: dict[str, str] = {}
        for layer in self.net.layer:
            for t in layer.top:
                later_producers.setdefault(t, layer.name)
        for i, layer in enumerate(self.net.layer):
            if not layer.name:
                raise RebirthError(f"layer #{i + 1} ({layer.type or 'no type'}) has no name")
            if layer.name in self.by_name:
                raise RebirthError(f"layer '{layer.name}': the name is used by two layers")
            if not layer.type:
                raise RebirthError(f"layer '{layer.name}' has no type")
            node = Node(i, layer)
            for b in layer.bottom:
                if b not in latest:
                    owner = later_producers.get(b)
                    if owner is not None and owner != layer.name:
                        self._raise_cycle_or_order(layer.name, b, owner)
                    raise RebirthError(f"layer '{layer.name}' ({layer.type}): bottom '{b}' is produced by no layer")
                ref = (b, latest[b])
                node.bottoms.append(ref)
                self.consumers[ref].append(node)
            for j, t in enumerate(layer.top):
                # Caffe's Net::AppendTop: top j is in place only when bottom j has its name
                in_place = j < len(layer.bottom) and layer.bottom[j] == t
                if t in latest and not in_place:
                    prev = self.producer[(t, latest[t])]
                    raise RebirthError(f"layer '{layer.name}' ({layer.type}): top '{t}' is already produced by "
                                       f"{f'layer {prev.name!r}' if prev is not None else 'a net input'}"
                                       f"{' (this layer)' if prev is node else ''} and is not computed in place "
                                       f"(in place, top {j} must be bottom {j})")
                ref = (t, latest.get(t, -1) + 1)
                latest[t] = ref[1]
                node.tops.append(ref)
                self.producer[ref] = node
                self.consumers[ref] = []
            self.nodes.append(node)
            self.by_name[layer.name] = node
        self._latest = latest

    def _raise_cycle_or_order(self, layer_name: str, blob: str, owner: str) -> None:
        """A bottom produced only by a later layer: a cycle if the owner depends on this layer."""
        produced_by = {}
        for layer in self.net.layer:
            for t in layer.top:
                produced_by.setdefault(t, layer.name)
        layers = {layer.name: layer for layer in self.net.layer}
        # Depth-first search from the owner back through its bottoms looking for layer_name.
        path, seen = [owner], set()

        def walk(name: str) -> bool:
            if name == layer_name:
                return True
            if name in seen:
                return False
            seen.add(name)
            for b in layers[name].bottom:
                src = produced_by.get(b)
                if src and src != name:
                    path.append(src)
                    if walk(src):
                        return True
                    path.pop()
            return False

        if walk(owner):
            cycle = " -> ".join([layer_name, *reversed(path[:-1]), layer_name]) if len(path) > 1 else \
                f"{layer_name} -> {owner} -> {layer_name}"
            raise RebirthError(f"layer '{layer_name}': the net has a cycle ({cycle})")
        raise RebirthError(f"layer '{layer_name}': bottom '{blob}' is produced only by the later layer "
                           f"'{owner}' (Caffe needs every bottom defined before it is used)")

    def _net_inputs(self) -> list[tuple[str, Shape | None]]:
        net = self.net
        names = list(net.input)
        shapes: list[Shape | None] = []
        if len(net.input_shape):
            shapes = [tuple(int(d) for d in s.dim) for s in net.input_shape]
        elif len(net.input_dim):
            dims = list(net.input_dim)
            if len(dims) != 4 * len(names):
                raise RebirthError(f"net '{net.name}': {len(dims)} input_dim values for {len(names)} inputs "
                                   "(need 4 each)")
            shapes = [tuple(int(x) for x in dims[4 * i:4 * i + 4]) for i in range(len(names))]
        if names and len(shapes) != len(names):
            if not all(n in self._overrides for n in names):
                raise RebirthError(f"net '{net.name}': inputs {names} have {len(shapes)} shapes "
                                   "(give input_shape or input_dim for each)")
            shapes = [None] * len(names)
        out = []
        for n, s in zip(names, shapes):
            s = self._overrides.get(n, s)
            if s and self.batch:
                s = (self.batch, *s[1:])
            out.append((n, tuple(s) if s is not None else None))
        return out

    # -- shapes ------------------------------------------------------------------------------
    def _infer_shapes(self) -> None:
        for node in self.nodes:
            bottoms = [self.version_shapes[b] for b in node.bottoms]
            tops: list[Shape | None]
            if any(s is None for s in bottoms):
                tops = [None] * len(node.tops)
            elif node.type in DATA_TYPES and any(t[0] in self._overrides for t in node.tops):
                tops = []
                for t in node.tops:
                    s = self._overrides.get(t[0])
                    tops.append((self.batch, *s[1:]) if (s and self.batch) else s)
                if tops[0] is None:
                    tops = [None] * len(node.tops)
            else:
                fn = SHAPE_FNS.get(node.type)
                if fn is None:
                    note = (f"layer '{node.name}': unknown layer type '{node.type}': carried through "
                            "untouched, shapes below it unknown")
                    self.notes.append(note)
                    self.barriers.append(node)
                    self.warnings.append(note)
                    tops = [None] * len(node.tops)
                else:
                    try:
                        tops, node.param_shapes, node.macs = fn(self, node.layer, bottoms)
                    except RebirthError:
                        if self.strict:
                            raise
                        self.notes.append(f"layer '{node.name}': shape unknown")
                        tops = [None] * len(node.tops)
                    tops = list(tops)[:len(node.tops)]
                    tops += [tops[-1] if tops else None] * (len(node.tops) - len(tops))
            for ref, shape in zip(node.tops, tops):
                check_blob(node.layer, ref[0], shape)
            for shape in node.param_shapes:
                check_blob(node.layer, "parameter", shape)
            node.top_shapes = tops
            for ref, shape in zip(node.tops, tops):
                self.version_shapes[ref] = shape

    @property
    def shapes(self) -> dict[str, Shape | None]:
        """Blob name -> shape (of its last version; in-place layers keep the shape)."""
        return {name: self.version_shapes[(name, v)] for name, v in self._latest.items()}

    @property
    def input_blobs(self) -> list[str]:
        """Blobs fed from outside: net-level inputs and the tops of Input layers."""
        return self.inputs + [t[0] for n in self.nodes if n.type == "Input" for t in n.tops]

    def unknown_cause(self, node: Node) -> Node | None:
        """The nearest layer of unknown type that ``node``'s shapes depend on (None when its shapes
        are known, or unknown for another reason)."""
        if node.type not in SHAPE_FNS and node.type not in DATA_TYPES:
            return node
        seen, todo = set(), [node]
        while todo:
            n = todo.pop()
            for p in self.predecessors(n):
                if p.name in seen:
                    continue
                seen.add(p.name)
                if p in self.barriers:
                    return p
                if any(s is None for s in p.top_shapes):
                    todo.append(p)
        return None

    def require_shapes(self, node: Node, purpose: str) -> None:
        """Raise, naming the layer of unknown type behind it, when ``node``'s shapes are unknown."""
        if node.top_shapes and all(s is not None for s in node.top_shapes):
            return
        cause = self.unknown_cause(node)
        why = (f"it depends on layer '{cause.name}' of unknown type '{cause.type}'" if cause is not None
               else "they cannot be inferred")
        raise RebirthError(f"layer '{node.name}' ({node.type}): {purpose} needs its output shape, but {why}")

    # -- navigation --------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        try:
            return self.by_name[name]
        except KeyError:
            raise RebirthError(f"no layer named '{name}'") from None

    def consumers_of(self, ref: BlobRef) -> list[Node]:
        return self.consumers.get(ref, [])

    def producer_of(self, ref: BlobRef) -> Node | None:
        return self.producer.get(ref)

    def successors(self, node: Node) -> list[Node]:
        out: list[Node] = []
        for t in node.tops:
            for c in self.consumers_of(t):
                if c not in out:
                    out.append(c)
        return out

    def predecessors(self, node: Node) -> list[Node]:
        out: list[Node] = []
        for b in node.bottoms:
            p = self.producer_of(b)
            if p is not None and p not in out:
                out.append(p)
        return out

    def topological_order(self) -> list[Node]:
        """Kahn's algorithm over the version DAG (stable: prototxt order among ready layers)."""
        indeg = {n.name: len(self.predecessors(n)) for n in self.nodes}
        ready = [n for n in self.nodes if indeg[n.name] == 0]
        order: list[Node] = []
        while ready:
            ready.sort(key=lambda n: n.index)
            n = ready.pop(0)
            order.append(n)
            for s in self.successors(n):
                indeg[s.name] -= 1
                if indeg[s.name] == 0:
                    ready.append(s)
        if len(order) != len(self.nodes):
            stuck = [n.name for n in self.nodes if indeg[n.name] > 0]
            raise RebirthError(f"the net has a cycle through layers {stuck}")
        return order

    def in_place_chain(self, node: Node) -> list[Node]:
        """The in-place layers applied to ``node``'s first top, in order (e.g. BatchNorm, Scale, ReLU)."""
        chain: list[Node] = []
        ref = node.tops[0] if node.tops else None
        while ref is not None:
            nxt = [c for c in self.consumers_of(ref) if c.in_place and c.bottoms and c.bottoms[0] == ref]
            if len(nxt) != 1:
                break
            chain.append(nxt[0])
            ref = nxt[0].tops[0]
        return chain

    # -- costs (costs.py) -------------------------------------------------------------------
    @property
    def memory_bytes(self) -> int:
        """Bytes of the distinct blobs Caffe allocates (``costs.memory_bytes``)."""
        return costs.memory_bytes(self)

    def totals(self) -> dict[str, int | float]:
        """Layers, parameters, MACs and memory, tensor vs non-tensor (``costs.totals``)."""
        return costs.totals(self)
