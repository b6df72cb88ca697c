"""The local check's ONNX Runtime path: pieces run in their own dtypes, batched side by side into few sessions.

Used for the pieces the float64 path cannot evaluate or bound (quantized ops, custom domains, subgraphs, ops
outside the float64 path's set). Pieces are batched into one model per side per CHUNK_BYTES of constants, so the
check costs about two session loads per chunk, not two per fold; a piece whose channels get fewer than MIN_SAMPLES
values runs again at a larger batch where its batch axis is free, else as copies on independent data. Each output is judged channel by channel (checking.metric) against
a tolerance by dtype.
"""

from __future__ import annotations

from itertools import chain
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import InvalidModelError
from ..graph.pieces import Piece
from .metric import is_float, scale_floor, tolerance_for, worst_channel
from .probes import Shape, batch_is_free, probe_attempts, probe_feeds, probe_shapes
from .renaming import prefixed
from .verdict import LocalCheck

CHUNK_BYTES = 64 << 20  # constants per batched model: bounds the memory of the check on big models
FED_CONSTANT_BYTES = 4096  # larger constants are fed at run time rather than serialized into the model
_FEEDABLE = {"float16", "float32", "float64", "bool"} | {f"{u}int{bits}" for u in ("", "u") for bits in (8, 16, 32, 64)}
MIN_SAMPLES = 16  # values per channel: the largest of 16 is within 2x of the spread but once in 5e6 channels
MAX_REPLICAS = 32

Feeds = Dict[str, np.ndarray]


def run_in_ort(
    pieces: Sequence[Piece],
    *,
    opset_imports: Sequence[onnx.OperatorSetIdProto],
    ir_version: int,
    seed: int = 0,
) -> List[LocalCheck]:
    """One LocalCheck per piece, in order, from ONNX Runtime in the pieces' own dtypes (float32 for float32 models).

    Pieces are run side by side, one batched model per side per CHUNK_BYTES of constants. A batched model that ONNX
    Runtime cannot load or run is split in halves until the bad pieces stand alone, so one bad piece costs a few
    sessions and judges only itself. Probe shapes: checking.probes.probe_attempts, the next while the before side
    fails. A piece whose outputs have fewer than MIN_SAMPLES values per channel runs again at a larger batch, or
    where its batch is fixed as several copies on independent data (one more before session for all such pieces).
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


def run_side(piece: Piece, probes: Feeds, side: str, *, opset_imports: Sequence[onnx.OperatorSetIdProto],
             ir_version: int) -> Feeds:
    """One side ("before" or "after") of a piece in ONNX Runtime on given probes (the float64 path's cross-check);
    raises InvalidModelError when ONNX Runtime cannot run it."""
    job = _Job(0, piece, 0)
    job.shapes = {name: array.shape for name, array in probes.items()}
    job.feeds = [probes]
    result = _Runner(list(opset_imports), ir_version).run_side([job], side)[0]
    if isinstance(result, str):
        raise InvalidModelError(result)
    return result[0]


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
        self.attempts = probe_attempts(piece)
        self.has_bools = any(np.dtype(spec.dtype) == np.bool_ for spec in piece.inputs)
        self.constant_bytes = max(_nbytes(piece.constants_before), _nbytes(piece.constants_after))
        self.before_error: Optional[str] = None
        self.attempt = 0
        self.replicas = 1
        self.batch = 1
        self.prepare()

    def prefix(self, copy: int) -> str:
        return f"p{self.index}c{copy}/"

    def prepare(self) -> None:
        self.shapes = probe_shapes(*self.attempts[self.attempt], batch=self.batch)
        rng = np.random.default_rng([self.seed, self.index, self.attempt])
        self.feeds = []
        for _ in range(self.replicas):
            feeds = probe_feeds(self.piece.inputs, self.shapes, rng)
            self.feeds.append(feeds)
            if self.has_bools:
                self.feeds.append({name: np.asarray(~a) if a.dtype == np.bool_ else a for name, a in feeds.items()})

    def retry(self) -> bool:
        """Move to the next probe shapes; False when there are none."""
        if self.attempt + 1 >= len(self.attempts):
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
        if self.replicas > 1 or self.batch > 1 or samples >= MIN_SAMPLES or samples == 0:
            return False
        # A free batch axis grows (one copy of the piece); otherwise independent copies side by side.
        if batch_is_free(self.attempts[self.attempt][0]):
            self.batch = -(-MIN_SAMPLES // samples)
        else:
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
                nodes.extend(prefixed(node, prefix) for node in (piece.before if side == "before" else piece.after))
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
        if is_float(before.dtype) and not np.all(np.isfinite(before.astype(np.float64))):
            check.notes.append(f"{name}: the original gives NaN/inf on the random inputs; not compared")
            continue
        tolerance = tolerance_for(before.dtype)
        check.method = f"ORT {before.dtype.name}"
        channel = None
        if any(array.shape != before.shape[1:] for array in after_arrays):
            error = float("inf")
            shape = next(array.shape for array in after_arrays if array.shape != before.shape[1:])
            check.error = f"{name} has shape {shape} in the replacement, {before.shape[1:]} in the original"
        else:
            after = np.stack(after_arrays)
            if is_float(after.dtype) and not np.all(np.isfinite(after.astype(np.float64))):
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


