"""Push a pooling through a Concat (exact): pool(concat(a, b)) == concat(pool(a), pool(b)).

Pooling works on each channel on its own, so a Pooling that reads a channel-axis Concat can run
on each of the Concat's inputs instead: one new Pooling per input, with the same parameters, and
the Concat joins the pooled blobs under the old pooling's top name. Nothing after it changes.

Why: the full-resolution concatenated blob disappears (GoogLeNet's ``inception_3b/output``,
480x28x28, is replaced by the pooled blobs, 480x14x14), and each branch now ends in a
convolution followed by a pooling, which streamline / pool_into_conv can fold into the
convolution's stride. The new poolings are named ``<branch blob>/<pooling>`` (e.g.
``inception_3b/1x1/pool3/3x3_s2``), so the block keeps its name prefix.

Matches are poolings whose input is a Concat output read by poolings only (inside GoogLeNet's
blocks the Concat output is also read by the next block's convolutions: those are not even
matched). Guards: the Concat joins 4-D blobs on axis 1, its output has no other consumer, the
pooling has one top, and the rewrite does not grow ``Graph.memory_bytes``.
"""
from __future__ import annotations

from deeprebirth.caffe import proto as pb
from deeprebirth.graph.dag import Graph, Node
from deeprebirth.graph.geometry import concat_axis
from deeprebirth.graph.model import Model
from deeprebirth.transforms.edit import memory_growth, unique_name
from deeprebirth.transforms.rules.base import Change, Match, Rule


class PushPoolConcat(Rule):
    name = "push_pool_concat"
    types = frozenset({"Concat"})
    exact = True
    default = True
    order = 20

    def __init__(self, push_global: bool = False):
        # A global pooling is exact to push too, but streamline keeps global poolings, so in the
        # branches it would stay as several poolings: only pushed when asked.
        self.push_global = push_global

    def match(self, graph: Graph) -> list[Match]:
        out = []
        for node in graph.nodes:
            if node.type != "Pooling" or len(node.bottoms) != 1:
                continue
            src = graph.producer_of(node.bottoms[0])
            if src is None or src.type != "Concat" or node.bottoms[0] not in src.tops:
                continue
            if any(c.type != "Pooling" for c in graph.consumers_of(node.bottoms[0])):
                continue   # the Concat output is needed anyway (inception blocks read it): no match
            out.append(Match(self.name, node.name, [src.name, node.name],
                             {"pool": node.name, "concat": src.name}))
        return out

    def guards(self, graph: Graph, match: Match, model: Model) -> str | None:
        pool, concat = graph.node(match.data["pool"]), graph.node(match.data["concat"])
        ref = pool.bottoms[0]
        shape = graph.version_shapes.get(ref)
        if shape is None:
            return f"'{pool.name}': the shape of its input is unknown"
        if len(shape) != 4 or concat_axis(concat.layer) not in (1, -3):
            return f"'{pool.name}': Concat '{concat.name}' does not join 4-D blobs on the channel axis"
        readers = [c.name for c in graph.consumers_of(ref) if c is not pool]
        if readers:
            return (f"'{pool.name}': the output of Concat '{concat.name}' is also read by "
                    f"'{readers[0]}'; it must stay")
        if len(pool.tops) != 1 or len(concat.tops) != 1:
            return f"'{pool.name}': pooling or Concat with several tops"
        if pool.layer.pooling_param.global_pooling and not self.push_global:
            # streamline keeps global poolings: pushed into the branches, one pooling would only
            # become several (and the branches' convolutions could no longer be fitted linearly).
            return f"'{pool.name}': a global pooling, which no rule absorbs in the branches; it stays after the Concat"
        growth = memory_growth(graph, model, lambda net: self._edit(net, graph, pool, concat))
        if growth > 0:
            return (f"'{pool.name}': pushing it into the branches of '{concat.name}' would grow blob "
                    f"memory by {growth} bytes")
        return None

    def _edit(self, net: "pb.NetParameter", graph: Graph, pool: Node, concat: Node) -> list[str]:
        """Rewrite ``net``: pools per Concat input, then the Concat under the pool's top."""
        taken = {layer.name for layer in net.layer} | set(graph.shapes)
        layers = list(net.layer)
        new_pools = []
        for b in concat.layer.bottom:
            name = unique_name(f"{b}/{pool.name}", taken)   # keeps the block's name prefix
            layer = pb.LayerParameter()
            layer.CopyFrom(pool.layer)
            layer.name = name
            del layer.bottom[:]
            del layer.top[:]
            layer.bottom.append(b)
            layer.top.append(name)
            new_pools.append(layer)
        out = []
        for layer in layers:
            if layer.name == pool.name:
                continue
            if layer.name == concat.name:
                out += new_pools
                moved = pb.LayerParameter()
                moved.CopyFrom(layer)
                del moved.bottom[:]
                moved.bottom.extend(p.name for p in new_pools)
                moved.top[0] = pool.layer.top[0]
                out.append(moved)
                continue
            out.append(layer)
        del net.layer[:]
        net.layer.extend(out)
        return [p.name for p in new_pools]

    def rewrite(self, model: Model, graph: Graph, match: Match) -> Change:
        pool, concat = graph.node(match.data["pool"]), graph.node(match.data["concat"])
        pool_name, concat_name, top = pool.name, concat.name, pool.layer.top[0]
        shape, out = graph.version_shapes[pool.bottoms[0]], pool.top_shapes[0]
        added = self._edit(model.net, graph, pool, concat)
        return Change(self.name, match.name, removed=[pool_name], modified=[concat_name], added=added,
                      notes=[f"'{pool_name}' pushed into the {len(added)} inputs of Concat '{concat_name}', "
                             f"which now writes '{top}' (the {'x'.join(map(str, shape[1:]))} "
                             f"concatenated blob becomes {'x'.join(map(str, out[1:]))} pooled blobs)"])


RULE = PushPoolConcat()
