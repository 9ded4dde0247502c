"""Rewrites of a static QDQ int8 graph (quantflow/core/quantize.py) where ONNX Runtime's optimizer leaves work on
the batch path; each keeps the numbers (bench/compress.py; BENCHMARKS.md, Compression):

* **Integer sums of gathered rows**: ``DQ(q) → ReduceSum(axis 1)`` over (B, N, E) becomes
  ``MatMulInteger(ones (1, N), q) → Cast → × scale``: the zero point is subtracted inside the integer product
  and the (B, N, E) float tensor is never written (the n-gram bag: ~10%). The sum is exact before the one
  scaling, where ReduceSum rounded after every term.
* **Max over time as a MaxPool**: ``DQ(q) → ReduceMax(axes=[2])`` of a (B, F, T) conv output becomes
  ``MaxPool(windows of POOL) → Q → DQ → ReduceMax`` with ``q``'s own scale and zero point: ORT runs the pool on
  the uint8 NHWC output of QLinearConv (its NhwcMaxPool kernel) and the DQ and the ReduceMax see a
  (B, F, 1) tensor, not (B, F, T) floats (~13%). The same maximum: dequantizing is increasing, so the max of
  the uint8 values is the max of their floats, and the pool's padding takes no part in a max.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

logger = logging.getLogger(__name__)

POOL = 128  # positions per MaxPool window in max_over_time_as_pool: one window for most texts


class Graph:
    """Look-ups over one graph: who produces and who consumes a tensor, initializer values, tensor ranks."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.initializers = {init.name: init for init in graph.initializer}
        inferred = onnx.shape_inference.infer_shapes(model).graph
        typed = [*inferred.value_info, *inferred.input, *inferred.output]
        self.ranks = {
            v.name: len(v.type.tensor_type.shape.dim) for v in typed if v.type.HasField("tensor_type")
        }

    def constant(self, name: str) -> np.ndarray | None:
        init = self.initializers.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def is_scalar(self, name: str) -> bool:
        value = self.constant(name)
        return value is not None and value.size == 1

    def produced_by(self, name: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _add_constant(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _sum_nodes(graph: onnx.GraphProto, q: str, zero_point: str, scale: str, out: str, keep: bool) -> list:
    """``ones (1, N) @ (q - zero_point)`` over (B, N, E) as int32, then float times ``scale``: (B, E)."""
    p = f"{out}_int_sum_"
    one, axis1 = _add_constant(graph, p + "one", np.array(1, np.uint8)), p + "axis1"
    _add_constant(graph, axis1, np.array([1], np.int64))
    _add_constant(graph, p + "zero", np.array(0, np.uint8))
    _add_constant(graph, p + "none", np.array(0, np.int32))
    _add_constant(graph, p + "no_rows", np.array([0], np.int64))
    nodes = [
        helper.make_node("Shape", [q], [p + "n"], start=1, end=2),  # (1,): N
        helper.make_node("Concat", [axis1, p + "n"], [p + "shape"], axis=0),  # (2,): 1, N
        helper.make_node("Expand", [one, p + "shape"], [p + "ones"]),  # (1, N) uint8
        helper.make_node(
            "MatMulInteger", [p + "ones", q, p + "zero", zero_point], [p + "product"]
        ),  # (B, 1, E)
        # N = 0 (a one-char text has no bigram): ORT leaves the product unwritten, the sum is 0
        helper.make_node("Greater", [p + "n", p + "no_rows"], [p + "any"]),
        helper.make_node("Where", [p + "any", p + "product", p + "none"], [p + "int"]),
        helper.make_node("Cast", [p + "int"], [p + "float"], to=TensorProto.FLOAT),
    ]
    scaled = p + "scaled" if not keep else out
    nodes.append(helper.make_node("Mul", [p + "float", scale], [scaled]))
    if not keep:
        nodes.append(helper.make_node("Squeeze", [scaled, axis1], [out]))  # (B, E)
    return nodes


def integer_row_sums(graph: onnx.GraphProto, g: Graph) -> int:
    """``DQ(q) → ReduceSum(axes=[1])`` over a rank-3 uint8 ``q``: an integer matrix product with ones."""
    done = 0
    for node in [n for n in graph.node if n.op_type == "ReduceSum" and len(n.input) == 2]:
        dq = g.produced_by(node.input[0], "DequantizeLinear")
        axes = g.constant(node.input[1])
        if dq is None or axes is None or axes.tolist() != [1] or g.ranks.get(dq.input[0]) != 3:
            continue
        if len(dq.input) < 3 or not (g.is_scalar(dq.input[1]) and g.is_scalar(dq.input[2])):
            continue
        if g.constant(dq.input[2]).dtype != np.uint8 or len(g.consumers.get(dq.output[0], [])) != 1:
            continue
        keep = bool(_attribute(node, "keepdims", 1))
        nodes = _sum_nodes(graph, dq.input[0], dq.input[2], dq.input[1], node.output[0], keep)
        graph.node.remove(node)
        graph.node.remove(dq)
        graph.node.extend(nodes)
        done += 1
    return done


def max_over_time_as_pool(graph: onnx.GraphProto, g: Graph) -> int:
    """``DQ(q) → ReduceMax(axes=[2])`` over (B, C, T): a uint8 MaxPool of ``POOL``-wide windows first."""
    done = 0
    for node in [n for n in graph.node if n.op_type == "ReduceMax" and len(n.input) == 2]:
        axes = g.constant(node.input[1])
        dq = g.produced_by(node.input[0], "DequantizeLinear")
        if dq is None or axes is None or axes.tolist() not in ([2], [-1]) or g.ranks.get(node.input[0]) != 3:
            continue
        if len(dq.input) < 3 or not (g.is_scalar(dq.input[1]) and g.is_scalar(dq.input[2])):
            continue
        p = f"{node.output[0]}_pooled"
        # pads: a window needs no full POOL positions, so any T gives ceil(T / POOL) windows, (B, C, 1) up to POOL
        pool = helper.make_node(
            "MaxPool", [dq.output[0]], [p], kernel_shape=[POOL], strides=[POOL], pads=[0, POOL - 1]
        )
        quantize = helper.make_node("QuantizeLinear", [p, dq.input[1], dq.input[2]], [p + "_q"])
        back = helper.make_node("DequantizeLinear", [p + "_q", dq.input[1], dq.input[2]], [p + "_dq"])
        node.input[0] = p + "_dq"  # the ReduceMax now reads (B, C, ceil(T / POOL))
        graph.node.extend([pool, quantize, back])
        done += 1
    return done


REWRITES: tuple[Callable[[onnx.GraphProto, Graph], int], ...] = (integer_row_sums, max_over_time_as_pool)


def _topological(graph: onnx.GraphProto) -> None:
    """Reorder the nodes so each comes after the producers of its inputs (ONNX requires it)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        free = [n for n in pending if all(name in ready for name in n.input)]
        if not free:
            raise ValueError(f"graph has a cycle or a missing input at {pending[0].name!r}")
        for node in free:
            ready.update(node.output)
        ordered += free
        pending = [n for n in pending if not all(name in ready for name in n.output)]
    del graph.node[:]
    graph.node.extend(ordered)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Constants that only a rewritten node read (ORT warns about each one left)."""
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def tighten(path: Path) -> dict[str, int]:
    """Apply every rewrite to the QDQ model file at ``path`` in place; how often each applied."""
    model = onnx.load(str(path))
    counts = {}
    for rewrite in REWRITES:
        counts[rewrite.__name__] = rewrite(model.graph, Graph(model))
    _topological(model.graph)
    _drop_unused_initializers(model.graph)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    logger.info("qdq rewrites on %s: %s", path, counts)
    return counts
