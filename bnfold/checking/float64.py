"""The local check's float64 path: both sides of a piece evaluated exactly enough to see the stored weights' ulps.

ONNX Runtime computes in the model's own dtype, whose rounding hides errors as small as "eps ignored" (~5e-6 on a
variance near 1). Here both sides run in float64 (onnx.reference on a copy of the piece converted to double), so
before(x) is the exact map of the stored original constants and after(x) that of the stored folded ones. A correct
fold's folded constants are the exact ones rounded to their dtype (relative error <= u, the unit roundoff), so
after(x) - before(x) is that rounding seen through the after side. Its size is bounded element by element by the
magnitude model (checking.magnitude): B, the standard deviation a rounding error of each stored constant of at most
its own size spreads to on the normal probes, so u * B bounds a correct fold's error's spread and

    |after(x) - before(x)| <= BOUND_FACTOR * u * B(x) + FLOAT64_SLACK * (channel peak)

holds for a correct fold (8 standard deviations, x2 for sums of such terms), while a wrong fold's error grows with
its own size: eps ignored on a float32 Conv is ~80 u. Pieces outside what the magnitude model bounds or what
onnx.reference evaluates return None: the caller runs them in ONNX Runtime instead.
"""

from __future__ import annotations

import math
from itertools import chain
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graph.pieces import Piece
from .. import tensor_store
from . import reference_ops
from .magnitude import FLOAT_TYPES, constant_nodes, fresh_means, roundoff, squared, to_squares, unsupported
from .metric import by_channel, channel_errors, is_float, scale_floor, tolerance_for
from .probes import batch_is_free, probe_attempts, probe_feeds, probe_shapes
from .renaming import prefixed
from .verdict import LocalCheck

METHOD = "float64"
BOUND_FACTOR = 16.0  # 8 standard deviations of a normal rounding error, x2 for a sum of such terms (bias + weights)
FLOAT64_SLACK = 2.0**-36  # float64 evaluation error of both sides, relative to the channel's peak (~1.5e-11)
MIN_SAMPLES = 16  # values per channel: detection power for errors that are a fraction of the channel
MAX_RUNS = 32


def check_in_float64(piece: Piece, opsets: Dict[str, int], seed: int, index: int,
                     confirm: Optional[Callable[..., Dict[str, np.ndarray]]] = None,
                     scratch: Optional["Scratch"] = None) -> Tuple[Optional[LocalCheck], str]:
    """(the verdict, "") or (None, why this piece is left to ONNX Runtime).

    confirm(piece, probes, side) -> that side's outputs in ONNX Runtime: a failing verdict stands only where
    onnx.reference computes both sides as ONNX Runtime does (within its float tolerance), so a quirk of the
    reference evaluator never rejects a correct fold."""
    why = unsupported(piece, opsets)
    if why:
        return None, why
    try:
        evaluation = _Evaluation(piece, opsets, scratch)
    except Exception as exc:  # onnx.reference has no implementation of an op at this opset
        return None, f"onnx.reference cannot evaluate the piece in float64 ({type(exc).__name__}: {exc})".split(
            "\n")[0]
    error = ""
    for attempt, (dims, size) in enumerate(probe_attempts(piece)):
        rng = np.random.default_rng([seed, index, attempt])
        try:
            runs, batch = _runs(evaluation, dims, size, rng)
        except Exception as exc:  # onnx.reference refused the piece at this size
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            continue
        check = _judge(piece, runs, roundoff(piece), probe_shapes(dims, size, batch))
        if check.failed and confirm is not None:
            disagreement = _disagreement(piece, runs[0], confirm)
            if disagreement:
                return None, disagreement
        return check, ""
    return None, f"onnx.reference cannot evaluate the piece in float64 ({error})"


def _disagreement(piece: Piece, run: Dict[str, np.ndarray], confirm) -> str:
    """Why onnx.reference does not compute a side as ONNX Runtime does on the same probes, or "" when both sides
    agree within ONNX Runtime's float tolerance (or ONNX Runtime cannot run them: then nothing contradicts)."""
    probes = {spec.name: run["p/" + spec.name].astype(spec.dtype) for spec in piece.inputs}
    for side in ("before", "after"):
        try:
            runtime = confirm(piece, probes, side)
        except Exception:
            continue
        for name in piece.outputs:
            reference, actual = run[side[0] + "/" + name], np.asarray(runtime[name])
            if reference.shape != actual.shape:
                return f"onnx.reference and ONNX Runtime disagree on the shape of {name} ({side} the fold)"
            if not is_float(actual.dtype) or not np.all(np.isfinite(actual.astype(np.float64))):
                continue
            errors = channel_errors(reference, actual, _axis(piece, name, reference.ndim), scale_floor(actual))
            if errors.size and errors.max() > tolerance_for(actual.dtype):
                return (f"onnx.reference and ONNX Runtime disagree on {name} {side} the fold "
                        f"(max rel error {errors.max():.3g})")
    return ""


# --- the evaluated model: before, after and the magnitude model, in one onnx.reference evaluator -------------------


class _Evaluation:
    """Two onnx.reference evaluators for one piece: both sides in float64 (names prefixed b/ and a/), and the after
    side's magnitude model (prefixed s/), fed squared constants and, for each normal probe, its mean square 1 (the
    variance of a weight's rounding seen through the after side); the magnitude model runs once per probe shape."""

    def __init__(self, piece: Piece, opsets: Dict[str, int], scratch: Optional["Scratch"] = None):
        self.piece = piece
        scratch = scratch or Scratch()
        scratch.reset(3 * 8 * sum(np.asarray(array).size for array in chain(piece.constants_before.values(),
                                                                            piece.constants_after.values())))
        self.constants = {"b/" + name: _double(array, scratch.take) for name, array in piece.constants_before.items()}
        self.constants.update({"a/" + name: _double(array, scratch.take)
                               for name, array in piece.constants_after.items()})
        self.squares = {"s/" + name: squared(array, scratch.take) for name, array in piece.constants_after.items()}
        floats = [array.dtype for array in self.squares.values() if array.dtype.kind == "f"]
        self.magnitude_dtype = np.float64 if np.dtype(np.float64) in floats else np.float32
        if self.magnitude_dtype == np.float64:
            self.squares = {name: array.astype(np.float64) if array.dtype.kind == "f" else array
                            for name, array in self.squares.items()}
        sides = [prefixed(node, side) for side, nodes in (("b/", piece.before), ("a/", piece.after))
                 for node in nodes]
        self.sides = _evaluator(sides, [*self.constants, *_inputs(piece, "b/"), *_inputs(piece, "a/")],
                                [side + name for side in ("b/", "a/") for name in piece.outputs], opsets)
        folded = constant_nodes(piece.after, piece.constants_after)
        if folded:  # constant-only nodes: their float64 results, squared, are the magnitude model's constants
            nodes = [prefixed(node, "a/") for node in piece.after if id(node) in folded]
            names = [name for node in nodes for name in node.output if name]
            values = _evaluator(nodes, list(self.constants), names, opsets).run(None, self.constants)
            self.squares.update(("s/" + name[2:], squared(value)) for name, value in zip(names, values))
        means = fresh_means(piece)
        squares = [prefixed(node, "s/") for node in piece.after if id(node) not in folded]
        for node in squares:
            to_squares(node, means)
        self.magnitude = _evaluator(squares, [*self.squares, *_inputs(piece, "s/")],
                                    ["s/" + name for name in piece.outputs], opsets)
        self.magnitudes: Dict[tuple, Dict[str, np.ndarray]] = {}

    def run(self, shapes, rng) -> Dict[str, np.ndarray]:
        """Outputs of every side ("b/y", "a/y", "s/y") on fresh probes of these shapes."""
        probes = {name: _double(array) for name, array in probe_feeds(self.piece.inputs, shapes, rng).items()}
        feeds = dict(self.constants)
        for side in ("b/", "a/"):
            feeds.update((side + name, array) for name, array in probes.items())
        outputs = dict(zip(self.sides.output_names, self.sides.run(None, feeds)))
        outputs.update(("p/" + name, array) for name, array in probes.items())
        key = tuple(sorted(shapes.items()))
        if key not in self.magnitudes:
            feeds = dict(self.squares)
            feeds.update(("s/" + name, np.ones(array.shape, self.magnitude_dtype) if array.dtype == np.float64
                          else array) for name, array in probes.items())
            self.magnitudes[key] = dict(zip(self.magnitude.output_names, self.magnitude.run(None, feeds)))
        outputs.update(self.magnitudes[key])
        return outputs


def _inputs(piece: Piece, side: str) -> List[str]:
    return [side + spec.name for spec in piece.inputs]


def _evaluator(nodes: List[onnx.NodeProto], inputs: List[str], outputs: List[str], opsets: Dict[str, int]):
    from onnx.reference import ReferenceEvaluator

    for node in nodes:
        _to_double(node)
    graph = helper.make_graph(nodes, "bnfold-local-check-float64",
                              [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None) for name in inputs],
                              [onnx.ValueInfoProto(name=name) for name in outputs])
    opsets = {**opsets, reference_ops.DOMAIN: 1}
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, version)
                                                    for domain, version in opsets.items()])
    return ReferenceEvaluator(model, new_ops=reference_ops.OPS)


def _double(array, take=None) -> np.ndarray:
    array = np.asarray(array)
    if not is_float(array.dtype):
        return array
    if take is None:
        return array.astype(np.float64)
    out = take(array.shape, np.dtype(np.float64))
    out[...] = array
    return out


class Scratch:
    """One buffer reused for the float64 and squared copies of each piece's constants, piece after piece: fresh
    memory for every piece's weights costs page faults, which on a ResNet-50 cost more than the arithmetic. The
    copies live as long as their piece's check."""

    def __init__(self):
        self.buffer = np.empty(0, np.uint8)
        self.used = 0

    def reset(self, nbytes: int) -> None:
        if self.buffer.nbytes < nbytes:
            self.buffer = np.empty(nbytes, np.uint8)
        self.used = 0

    def take(self, shape, dtype: np.dtype) -> np.ndarray:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if self.used + nbytes > self.buffer.nbytes:  # more than reset() planned for: a fresh array
            return np.empty(shape, dtype)
        view = self.buffer[self.used:self.used + nbytes].view(dtype).reshape(shape)
        self.used += -(-nbytes // 8) * 8
        return view


def _to_double(node: onnx.NodeProto) -> None:
    """Float types named by the node (Cast targets, Constant and ConstantOfShape values) become double."""
    for attr in node.attribute:
        if attr.name == "to" and attr.i in FLOAT_TYPES:
            attr.i = TensorProto.DOUBLE
        elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type in FLOAT_TYPES:
            attr.t.CopyFrom(numpy_helper.from_array(tensor_store.value(attr.t).astype(np.float64), attr.t.name))
    if node.op_type == "Constant":
        for attr in list(node.attribute):
            if attr.name in ("value_float", "value_floats"):
                value = np.asarray(helper.get_attribute_value(attr), np.float64)
                node.attribute.remove(attr)
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(value)))


def _runs(evaluation: _Evaluation, dims, size: int, rng) -> Tuple[List[Dict[str, np.ndarray]], int]:
    """Outputs of every side, one dict per run, until each channel has MIN_SAMPLES values: a free batch axis grows
    once, otherwise the piece runs again on fresh draws. Also the batch used."""
    piece = evaluation.piece
    batch = 1
    runs = [evaluation.run(probe_shapes(dims, size, batch), rng)]
    samples = _samples(piece, runs[0])
    if 0 < samples < MIN_SAMPLES and batch_is_free(dims):
        batch = -(-MIN_SAMPLES // samples)
        runs = [evaluation.run(probe_shapes(dims, size, batch), rng)]
        samples = _samples(piece, runs[0])
    if 0 < samples < MIN_SAMPLES:
        copies = min(MAX_RUNS, -(-MIN_SAMPLES // samples))
        runs += [evaluation.run(probe_shapes(dims, size, batch), rng) for _ in range(copies - 1)]
    return runs, batch


def _samples(piece: Piece, run: Dict[str, np.ndarray]) -> int:
    counts = [by_channel(np.asarray(run["b/" + name]), _axis(piece, name, np.ndim(run["b/" + name]))).shape[1]
              for name in piece.outputs]
    return min(counts, default=MIN_SAMPLES)


def _axis(piece: Piece, name: str, ndim: int) -> Optional[int]:
    axis = piece.channel_axes.get(name)
    return None if axis is None or ndim == 0 else axis % ndim


# --- the verdict ---------------------------------------------------------------------------------------------------


def _judge(piece: Piece, runs: List[Dict[str, np.ndarray]], roundoff: float, shapes) -> LocalCheck:
    check = LocalCheck(piece.label, passed=True, shapes=shapes, method=METHOD)
    worst = -1.0
    for name in piece.outputs:
        before = np.stack([np.asarray(run["b/" + name]) for run in runs])
        after_arrays = [np.asarray(run["a/" + name]) for run in runs]
        floating = before.dtype.kind == "f"
        if floating and not np.all(np.isfinite(before)):
            check.notes.append(f"{name}: the original gives NaN/inf on the random inputs; not compared")
            continue
        channel = None
        if any(array.shape != before.shape[1:] for array in after_arrays):
            ratio, error, tolerance = math.inf, math.inf, 0.0
            shape = next(array.shape for array in after_arrays if array.shape != before.shape[1:])
            check.error = f"{name} has shape {shape} in the replacement, {before.shape[1:]} in the original"
        else:
            after = np.stack(after_arrays)
            if floating and not np.all(np.isfinite(after.astype(np.float64))):
                ratio, error, tolerance = math.inf, math.inf, 0.0
                check.error = f"{name} has NaN/inf in the replacement where the original is finite"
            else:
                axis = _axis(piece, name, before.ndim - 1)
                axis = None if axis is None else axis + 1
                magnitude = np.sqrt(np.maximum(np.stack([np.asarray(run["s/" + name]) for run in runs])
                                               .astype(np.float64), 0.0)) if floating else np.zeros(before.shape)
                ratio, error, tolerance, channel = _worst(before, after, magnitude, axis,
                                                          roundoff if floating else 0.0)
        if ratio > worst:
            worst = ratio
            check.max_error, check.tolerance, check.output, check.channel = error, tolerance, name, channel
            check.bound_ratio = ratio
        if ratio > 1.0:
            check.passed = False
    if worst < 0:
        check.passed = False
        check.skipped = "the original gives NaN/inf on every output for the random inputs"
    return check


def _worst(before: np.ndarray, after: np.ndarray, magnitude: np.ndarray, axis: Optional[int], roundoff: float
           ) -> Tuple[float, float, float, Optional[int]]:
    """(worst bound ratio, that channel's relative error, the relative error at its bound, the channel or None)."""
    b, a, m = (by_channel(array.astype(np.float64), axis) for array in (before, after, magnitude))
    if b.shape[1] == 0:
        return 0.0, 0.0, BOUND_FACTOR * roundoff, None
    difference = np.abs(a - b)
    peak = np.maximum(np.abs(b).max(axis=1), m.max(axis=1))
    bound = BOUND_FACTOR * roundoff * m + FLOAT64_SLACK * peak[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(difference == 0, 0.0, difference / bound).max(axis=1)
    channel = int(np.argmax(ratios))
    ratio = float(ratios[channel])
    error = float(channel_errors(before, after, axis, scale_floor(before))[channel])
    tolerance = error / ratio if ratio > 0 and math.isfinite(ratio) else (0.0 if ratio else BOUND_FACTOR * roundoff)
    return ratio, error, tolerance, (channel if axis is not None else None)
