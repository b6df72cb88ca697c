"""The local check of single folds: each fold's replaced piece and its replacement, run alone in ONNX Runtime.

A fold is proven where it happens, independently of the model's inputs: the piece's `before` nodes and its `after`
nodes run on the same seeded random inputs (small spatial sizes valid for the piece's kernels) and each output is
compared channel by channel against that channel's own magnitude, so one large channel cannot hide a wrong small
one. Pieces are batched side by side into few sessions (one per side per 64 MiB of constants) so the check costs
about two session loads per model, not two per fold.

    checks = check_pieces(pieces, opset_imports=model.opset_import, ir_version=model.ir_version)
    rejected = [check for check in checks if check.failed]

Over 300 lines on purpose: batching pieces into few sessions (prefixing, chunking, splitting failures) and
judging them are one check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import InvalidModelError
from ..graph.pieces import Piece
from ..inputs import random_array
from ..rules.producers import KERNEL_OPS

# Largest relative error per channel a correct fold may show, by output dtype. Measured with
# benchmarks/local_check.py: the 53 Conv+BN folds of a ResNet-50 (up to 2048 channels, 3x3 kernels over 512
# channels) in ONNX Runtime CPU, optimizations off. float32: correct folds reach 3.4e-6 (random BN statistics with
# scales 0.1-10, means up to 5x the activations' spread) and 2.2e-6 (trained-looking statistics); a Gemm over 2048
# features 1.6e-6; so 1e-4 leaves 30x, while the smallest wrong fold the tests plant (a shift off by 1% of one
# channel's range) shows as 1e-2. float16: 1.8e-3 (trained-looking) to 5.1e-3 (extreme statistics), mostly the
# folded weights' own rounding to float16; a Gemm 1.3e-3. float64: correct folds within 1e-14. bfloat16 keeps the
# end-to-end check's 5e-2 (eps 8e-3). Integer and bool outputs must match exactly.
TOLERANCES: Dict[str, float] = {"float64": 1e-9, "float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
LOW_PRECISION_TOLERANCE = 5e-2  # other float types numpy lacks (float8, float4 from ml_dtypes)
EXACT = 0.0

CHUNK_BYTES = 64 << 20  # constants per batched model: bounds the memory of the check on big models
FED_CONSTANT_BYTES = 4096  # larger constants are fed at run time rather than serialized into the model
_FEEDABLE = {"float16", "float32", "float64", "bool"} | {f"{u}int{bits}" for u in ("", "u") for bits in (8, 16, 32, 64)}
MIN_SPATIAL = 4
MIN_SAMPLES = 16  # values per channel: the largest of 16 is within 2x of the spread but once in 5e6 channels
MAX_REPLICAS = 32
RETRY_SIZES = (16, 32)  # unknown dims tried when the first size is too small for the before side

Shape = Tuple[int, ...]
Feeds = Dict[str, np.ndarray]


@dataclass
class LocalCheck:
    """The verdict on one piece.

    passed: both sides ran and every compared output is within tolerance. skipped: why the piece was not judged
    (ONNX Runtime cannot run the before side, or every output of the before side was NaN/inf); a skipped piece
    has passed False and is no evidence against the fold. `failed` is the verdict that rejects a fold.
    max_error: the worst per-channel relative error (max |after - before| over a channel / that channel's
    max |before|), on `output`, channel `channel` (None: the output has no channel axis); inf when the after side
    gave NaN/inf or a different shape; None when nothing was compared. tolerance: the bound for that output's dtype.
    """

    label: str
    passed: bool
    max_error: Optional[float] = None
    tolerance: Optional[float] = None
    output: Optional[str] = None
    channel: Optional[int] = None
    skipped: Optional[str] = None
    error: Optional[str] = None  # why the after side is wrong beyond numbers: it did not run, a shape differs
    shapes: Dict[str, Shape] = field(default_factory=dict)  # the input shapes used
    notes: List[str] = field(default_factory=list)  # outputs left out (NaN/inf on the before side)

    @property
    def failed(self) -> bool:
        return not self.passed and self.skipped is None

    @property
    def reason(self) -> str:
        """One line for the report: why the fold is rejected, skipped, or how close it is."""
        if self.skipped is not None:
            return f"local check skipped: {self.skipped}"
        if self.error is not None:
            return f"local check failed: {self.error}"
        where = f" on {self.output}" + (f" channel {self.channel}" if self.channel is not None else "")
        verdict = "passed" if self.passed else "failed"
        relation = "<=" if self.passed else ">"
        return f"local check {verdict}: max rel error {self.max_error:.3g} {relation} {self.tolerance:.3g}{where}"


# --- metric (pure numpy) --------------------------------------------------------------------------------------


def channel_errors(before: np.ndarray, after: np.ndarray, axis: Optional[int], floor: float = 0.0) -> np.ndarray:
    """Per channel on `axis` (None: the whole tensor is one channel): max |after - before| / max(max |before|,
    floor), in float64. `floor` keeps an all-zero channel from dividing by zero; a channel where both are zero
    scores 0. The arrays must be finite and of one shape."""
    b = np.asarray(before).astype(np.float64)
    a = np.asarray(after).astype(np.float64)
    if b.shape != a.shape:
        raise ValueError(f"shapes differ: {b.shape} vs {a.shape}")
    if axis is None or b.ndim == 0:
        b, a = b.reshape(1, -1), a.reshape(1, -1)
    else:
        b = np.moveaxis(b, axis, 0).reshape(b.shape[axis], -1)
        a = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)
    if b.shape[1] == 0:
        return np.zeros(b.shape[0])
    difference = np.abs(a - b).max(axis=1)
    scale = np.maximum(np.abs(b).max(axis=1), floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        errors = difference / scale
    return np.where(difference == 0, 0.0, errors)


def worst_channel(
    before: np.ndarray, after: np.ndarray, axis: Optional[int], floor: float = 0.0
) -> Tuple[float, Optional[int]]:
    """(largest channel error, its channel index or None without a channel axis) of `channel_errors`."""
    errors = channel_errors(before, after, axis, floor)
    if errors.size == 0:
        return 0.0, None
    index = int(np.argmax(errors))
    return float(errors[index]), (index if axis is not None and np.ndim(before) > 0 else None)


def tolerance_for(dtype: np.dtype) -> float:
    """The largest per-channel relative error a correct fold may show in an output of this dtype."""
    dtype = np.dtype(dtype)
    if dtype.name in TOLERANCES:
        return TOLERANCES[dtype.name]
    return LOW_PRECISION_TOLERANCE if _is_float(dtype) else EXACT


def scale_floor(before: np.ndarray) -> float:
    """The smallest channel scale: one rounding unit of the output's peak, so a channel that is zero in the
    original is judged against what rounding elsewhere in the tensor could leave in it."""
    before = np.asarray(before)
    if before.size == 0:
        return np.finfo(np.float64).tiny
    eps = _eps(before.dtype) if _is_float(before.dtype) else 1.0
    peak = float(np.abs(before.astype(np.float64)).max())
    return max(peak * eps, np.finfo(np.float64).tiny)


def _is_float(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.inexact) or dtype.name.startswith(("bfloat16", "float8", "float4"))


def _eps(dtype: np.dtype) -> float:
    import ml_dtypes

    return float(ml_dtypes.finfo(dtype).eps)


# --- the check --------------------------------------------------------------------------------------------------


def check_pieces(
    pieces: Sequence[Piece],
    *,
    opset_imports: Sequence[onnx.OperatorSetIdProto],
    ir_version: int,
    seed: int = 0,
) -> List[LocalCheck]:
    """One LocalCheck per piece, in order. The pieces of one graph scope share its opset imports and IR version.

    Pieces are run side by side, one batched model per side per CHUNK_BYTES of constants. A batched model that ONNX
    Runtime cannot load or run is split in halves until the bad pieces stand alone, so one bad piece costs a few
    sessions and judges only itself. Unknown dims: axis 0 gets 1, others a size valid for the piece's kernels,
    then RETRY_SIZES while the before side fails. A piece whose outputs have fewer than MIN_SAMPLES values per
    channel runs as several copies on independent data (one more before session for all such pieces).
    """
    runner = _Runner(list(opset_imports), ir_version)
    jobs = [_Job(index, piece, seed) for index, piece in enumerate(pieces)]
    checks: List[Optional[LocalCheck]] = [None] * len(jobs)
    for chunk in _chunks(jobs, CHUNK_BYTES):
        ran = _run_before(runner, chunk)
        for job in chunk:
            if job.index not in ran:
                checks[job.index] = LocalCheck(
                    job.piece.label,
                    passed=False,
                    skipped=f"ONNX Runtime cannot run the original piece: {job.before_error}",
                    shapes=job.shapes,
                )
        after = runner.run_side([job for job in chunk if job.index in ran], "after")
        for job in chunk:
            if job.index in ran:
                checks[job.index] = _judge(job, ran[job.index], after[job.index])
    return checks  # type: ignore[return-value]


class _Job:
    """One piece with the shapes and random feeds of its current attempt.

    `feeds` holds one dict per copy of the piece in the batched model: `replicas` independent draws (so every
    channel has MIN_SAMPLES values to take its scale from), each also with every bool flipped where the piece
    reads bools (both branches of an If, both values of a mask).
    """

    def __init__(self, index: int, piece: Piece, seed: int):
        self.index = index
        self.piece = piece
        self.seed = seed
        spatial = _spatial_size(piece)
        self.sizes = [spatial] + [size for size in RETRY_SIZES if size > spatial]
        self.has_unknown = any(dim is None for spec in piece.inputs for dim in spec.dims)
        self.has_bools = any(np.dtype(spec.dtype) == np.bool_ for spec in piece.inputs)
        self.constant_bytes = max(_nbytes(piece.constants_before), _nbytes(piece.constants_after))
        self.before_error: Optional[str] = None
        self.attempt = 0
        self.replicas = 1
        self.prepare()

    def prefix(self, copy: int) -> str:
        return f"p{self.index}c{copy}/"

    def prepare(self) -> None:
        size = self.sizes[self.attempt]
        self.shapes = {
            spec.name: tuple(
                dim if dim is not None else (1 if axis == 0 else size) for axis, dim in enumerate(spec.dims)
            )
            for spec in self.piece.inputs
        }
        rng = np.random.default_rng([self.seed, self.index, self.attempt])
        self.feeds = []
        for _ in range(self.replicas):
            feeds = {
                spec.name: np.asarray(random_array(spec.dtype, self.shapes[spec.name], rng))
                for spec in self.piece.inputs
            }
            self.feeds.append(feeds)
            if self.has_bools:
                self.feeds.append({name: np.asarray(~a) if a.dtype == np.bool_ else a for name, a in feeds.items()})

    def retry(self) -> bool:
        """Move to the next size for unknown dims; False when there is none."""
        if not self.has_unknown or self.attempt + 1 >= len(self.sizes):
            return False
        self.attempt += 1
        self.prepare()
        return True

    def replicate(self, outputs: List[Feeds]) -> bool:
        """Draw enough copies that each channel of each output has MIN_SAMPLES values; False if it already has."""
        axes = self.piece.channel_axes
        samples = min(
            (_samples_per_channel(array, axes.get(name)) for run in outputs for name, array in run.items()),
            default=MIN_SAMPLES,
        )
        if self.replicas > 1 or samples >= MIN_SAMPLES or samples == 0:
            return False
        self.replicas = min(MAX_REPLICAS, -(-MIN_SAMPLES // samples))
        self.prepare()
        return True


def _samples_per_channel(array: np.ndarray, axis: Optional[int]) -> int:
    array = np.asarray(array)
    if axis is None or array.ndim == 0:
        return array.size
    channels = array.shape[axis % array.ndim]
    return array.size // channels if channels else 0


def _run_before(runner: "_Runner", chunk: List[_Job]) -> Dict[int, List[Feeds]]:
    """The before side's outputs by job index, for the jobs whose before side ran at one of their sizes. A job
    whose channels got too few values is run again with more copies (one more session for all such jobs)."""
    ran: Dict[int, List[Feeds]] = {}
    pending = chunk
    while pending:
        results = runner.run_side(pending, "before")
        again = []
        for job in pending:
            result = results[job.index]
            if isinstance(result, str):
                job.before_error = result
                if job.retry():
                    again.append(job)
            elif job.replicate(result):
                again.append(job)
            else:
                ran[job.index] = result
        pending = again
    return ran


class _Runner:
    """Builds and runs the batched model of one side for a list of jobs."""

    def __init__(self, opset_imports: List[onnx.OperatorSetIdProto], ir_version: int):
        self.opset_imports = opset_imports
        self.ir_version = ir_version

    def run_side(self, jobs: List[_Job], side: str) -> Dict[int, Union[List[Feeds], str]]:
        """Each job's outputs (one dict per copy) or the one-line reason its side did not run."""
        if not jobs:
            return {}
        try:
            return self._run_together(jobs, side)
        except InvalidModelError as error:
            if len(jobs) == 1:
                return {jobs[0].index: str(error)}
        middle = len(jobs) // 2
        return {**self.run_side(jobs[:middle], side), **self.run_side(jobs[middle:], side)}

    def _run_together(self, jobs: List[_Job], side: str) -> Dict[int, List[Feeds]]:
        from ..runtime import make_session, run

        # ORT's own error log stays quiet: a piece that does not run is expected here, and reported as a skip.
        session = make_session(self._model(jobs, side), opt_level="disable", log_severity=4, arena=False)
        feeds = {}
        for job in jobs:
            fed = {name: array for name, array in _constants(job.piece, side).items() if _fed(array)}
            for copy, inputs in enumerate(job.feeds):
                prefix = job.prefix(copy)
                feeds.update((prefix + name, array) for name, array in chain(inputs.items(), fed.items()))
        outputs = run(session, feeds)
        return {
            job.index: [
                {name: outputs[job.prefix(copy) + name] for name in job.piece.outputs} for copy in range(len(job.feeds))
            ]
            for job in jobs
        }

    def _model(self, jobs: List[_Job], side: str) -> onnx.ModelProto:
        """The side's nodes of every copy of every job, names prefixed; large constants are graph inputs fed at run
        time (no protobuf copy of the weights, one array for all copies), small ones (shapes, axes, scalars)
        initializers as in the model."""
        nodes, inputs, outputs, initializers = [], [], [], []
        for job in jobs:
            piece = job.piece
            constants = _constants(piece, side)
            for copy in range(len(job.feeds)):
                prefix = job.prefix(copy)
                nodes.extend(_prefixed(node, prefix) for node in (piece.before if side == "before" else piece.after))
                for name, array in constants.items():
                    if _fed(array):
                        inputs.append(_value_info(prefix + name, array.dtype, array.shape))
                    else:
                        initializers.append(numpy_helper.from_array(array, prefix + name))
                inputs.extend(
                    _value_info(prefix + spec.name, spec.dtype, job.shapes[spec.name]) for spec in piece.inputs
                )
                outputs.extend(onnx.ValueInfoProto(name=prefix + name) for name in piece.outputs)
        graph = helper.make_graph(nodes, f"bnfold-local-check-{side}", inputs, outputs, initializer=initializers)
        return helper.make_model(graph, opset_imports=self.opset_imports, ir_version=self.ir_version)


def _constants(piece: Piece, side: str) -> Dict[str, np.ndarray]:
    constants = piece.constants_before if side == "before" else piece.constants_after
    return {name: np.asarray(array) for name, array in constants.items()}


def _fed(array: np.ndarray) -> bool:
    """Whether a constant goes in as a run-time feed: large, of a dtype ONNX Runtime's Python binding takes."""
    return array.nbytes > FED_CONSTANT_BYTES and array.dtype.name in _FEEDABLE


def _value_info(name: str, dtype: np.dtype, shape: Shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)


def _judge(job: _Job, before_runs: List[Feeds], after_runs: Union[List[Feeds], str]) -> LocalCheck:
    piece = job.piece
    if isinstance(after_runs, str):
        return LocalCheck(
            piece.label,
            passed=False,
            error=f"the replacement does not run where the original does: {after_runs}",
            shapes=job.shapes,
        )
    check = LocalCheck(piece.label, passed=True, shapes=job.shapes)
    worst_ratio = -1.0
    for name in piece.outputs:
        # The copies of the piece stacked on a new axis 0: each channel's scale comes from all of them.
        before = np.stack([np.asarray(run[name]) for run in before_runs])
        after_arrays = [np.asarray(run[name]) for run in after_runs]
        if _is_float(before.dtype) and not np.all(np.isfinite(before.astype(np.float64))):
            check.notes.append(f"{name}: the original gives NaN/inf on the random inputs; not compared")
            continue
        tolerance = tolerance_for(before.dtype)
        channel = None
        if any(array.shape != before.shape[1:] for array in after_arrays):
            error = float("inf")
            shape = next(array.shape for array in after_arrays if array.shape != before.shape[1:])
            check.error = f"{name} has shape {shape} in the replacement, {before.shape[1:]} in the original"
        else:
            after = np.stack(after_arrays)
            if _is_float(after.dtype) and not np.all(np.isfinite(after.astype(np.float64))):
                error = float("inf")
                check.error = f"{name} has NaN/inf in the replacement where the original is finite"
            else:
                axis = piece.channel_axes.get(name)
                axis = None if axis is None or before.ndim == 1 else axis % (before.ndim - 1) + 1
                error, channel = worst_channel(before, after, axis, scale_floor(before))
        ratio = error / tolerance if tolerance else (float("inf") if error else 0.0)
        if ratio > worst_ratio:
            worst_ratio = ratio
            check.max_error, check.tolerance, check.output, check.channel = error, tolerance, name, channel
        if error > tolerance:
            check.passed = False
    if worst_ratio < 0:
        check.passed = False
        check.skipped = "the original gives NaN/inf on every output for the random inputs"
    return check


# --- inputs and batching ---------------------------------------------------------------------------------------


def _spatial_size(piece: Piece) -> int:
    """A size for unknown non-batch dims that every kernel in the piece fits with outputs to spare: over the
    piece's Conv/ConvTranspose/pooling nodes, the widest dilated kernel plus three strides (4 outputs per axis
    unpadded, so 16 values per channel in 2-D). Small on purpose: the check's cost is weights x positions."""
    constants = {**piece.constants_before, **piece.constants_after}
    widest = 0
    for node in chain(piece.before, piece.after):
        if node.op_type not in KERNEL_OPS:
            continue
        attributes = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
        kernel = list(attributes.get("kernel_shape", []))
        weight_index = 3 if node.op_type == "QLinearConv" else 1
        if not kernel and "Pool" not in node.op_type and len(node.input) > weight_index:
            weight = constants.get(node.input[weight_index])
            kernel = list(np.shape(weight)[2:]) if weight is not None else []
        dilations = list(attributes.get("dilations", [])) or [1] * len(kernel)
        strides = list(attributes.get("strides", [])) or [1] * len(kernel)
        for k, d, s in zip(kernel, dilations, strides):
            widest = max(widest, (int(k) - 1) * int(d) + 1 + 3 * int(s))
    return max(MIN_SPATIAL, widest)


def _nbytes(constants: Dict[str, np.ndarray]) -> int:
    return sum(np.asarray(array).nbytes for array in constants.values())


def _chunks(jobs: List[_Job], limit: int) -> Iterable[List[_Job]]:
    """Consecutive runs of jobs whose constants add up to at most `limit` bytes (a larger piece stands alone)."""
    chunk: List[_Job] = []
    total = 0
    for job in jobs:
        if chunk and total + job.constant_bytes > limit:
            yield chunk
            chunk, total = [], 0
        chunk.append(job)
        total += job.constant_bytes
    if chunk:
        yield chunk


def _prefixed(node: onnx.NodeProto, prefix: str) -> onnx.NodeProto:
    """A copy of `node` with every tensor and node name prefixed, subgraphs included, so pieces cannot collide."""
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    _prefix_node(copy, prefix)
    return copy


def _prefix_node(node: onnx.NodeProto, prefix: str) -> None:
    for names in (node.input, node.output):
        renamed = [prefix + name if name else name for name in names]
        del names[:]
        names.extend(renamed)
    if node.name:
        node.name = prefix + node.name
    for attribute in node.attribute:
        if attribute.HasField("g"):
            _prefix_graph(attribute.g, prefix)
        for graph in attribute.graphs:
            _prefix_graph(graph, prefix)


def _prefix_graph(graph: onnx.GraphProto, prefix: str) -> None:
    for value in chain(graph.input, graph.output, graph.value_info):
        value.name = prefix + value.name
    for tensor in graph.initializer:
        tensor.name = prefix + tensor.name
    for sparse in graph.sparse_initializer:
        sparse.values.name = prefix + sparse.values.name
    for node in graph.node:
        _prefix_node(node, prefix)
