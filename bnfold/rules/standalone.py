"""A BatchNormalization with nothing to fold into becomes x * scale + shift: one Mul and one Add.

Used only when the chain walk reaches no producer and no reader can absorb the BN (after a graph input, a Concat,
pooling, PRelu, Relu or a residual Add). The constants have shape [C, 1, ..., 1] so they broadcast on axis 1,
which needs the input's rank, and X's dtype, which needs its type.
"""

from __future__ import annotations

from onnx import helper

from ..graph import Edit, GraphIndex, is_op
from .base import BatchNorm, Refuse, Rule, rank_unknown, set_exact
from .chain import Candidate
from .look_through import TABLE
from .producers import PRODUCERS


def rank_of(name: str, index: GraphIndex):
    """The rank the model says, else what the producing op's table entry says (a Gemm or a Flatten: 2)."""
    rank = index.rank(name)
    producer = index.producer(name)
    if rank is None and is_op(producer, TABLE):
        return TABLE[producer.op_type].output_rank(producer)
    if rank is None and is_op(producer, PRODUCERS):
        return PRODUCERS[producer.op_type].known_output_rank
    return rank


def plan(bn: BatchNorm, index: GraphIndex) -> Edit:
    conflict = index.type_conflict(bn.input) or index.type_conflict(bn.output)
    if conflict:
        raise Refuse(conflict)
    rank = rank_of(bn.input, index) or rank_of(bn.output, index)
    if rank is None:
        raise Refuse(f"per-channel Mul/Add constants cannot be shaped: {rank_unknown(bn.input)}")
    if rank < 2:
        raise Refuse(f"BN input has rank {rank}; BatchNormalization needs [N, C, ...]")
    dtype = index.dtype(bn.input) or index.dtype(bn.output)
    if dtype is None:
        raise Refuse("element type of the BN input is not declared, so the Mul/Add constants' dtype is unknown; "
                     "run ONNX shape inference on the model first")
    label = bn.node.name or bn.output
    shape = (bn.channels,) + (1,) * (rank - 2)
    mul = helper.make_node("Mul", [bn.input], [index.unique_name(f"{bn.output}_bnfold_scaled")],
                           name=index.unique_name(f"{label}_bnfold_mul"))
    add = helper.make_node("Add", [mul.output[0]], [bn.output], name=index.unique_name(f"{label}_bnfold_add"))
    edit = Edit(into=[mul, add])
    edit.remove(bn.node)
    edit.insert_after(bn.node, [mul, add])
    set_exact(edit, mul, 1, bn.scale.reshape(shape), dtype, f"{label}_bnfold_scale")
    set_exact(edit, add, 1, bn.shift.reshape(shape), dtype, f"{label}_bnfold_shift")
    return edit


class Standalone(Rule):
    """Opt-in (--standalone): a BN whose walk up reaches no producer becomes Mul + Add."""

    name = "standalone"
    description = ("BatchNormalization with no foldable neighbour (after an input, Concat, pooling, Relu...) -> "
                   "Mul + Add by per-channel constants (opt-in: --standalone)")
    opt_in = True
    hint = "--standalone would make it Mul + Add, which ONNX Runtime runs 1.1-1.5x slower than BatchNormalization"

    def match(self, candidate: Candidate):
        walk, index = candidate.walk, candidate.index
        # A producer reached through look-through nodes one of which other nodes read too (DenseNet's transition
        # AveragePool, read by the next BN and the Concat) cannot absorb the BN: nothing does.
        shared = any(len(index.value_readers(node.output[0])) != 1 or index.is_graph_output(node.output[0])
                     for node in walk.nodes)
        return None if is_op(walk.top, PRODUCERS) and not shared else walk

    def describe(self, walk) -> str:
        return "Mul + Add could replace it"

    def plan(self, walk, candidate: Candidate) -> Edit:
        return plan(candidate.bn, candidate.index)


RULE = Standalone()
