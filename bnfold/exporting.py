"""PyTorch -> ONNX with every BatchNorm kept, folded by bnfold's own rules, checked against PyTorch three ways.

    model, report = bnfold.export(module, example_inputs, "net.onnx", fold=True)

PyTorch's exporters fold some BatchNorms on their own and leave others, without saying which. bnfold exports so
that every BatchNormalization survives, folds with its rules (each BN folded or kept with a reason), and runs the
PyTorch module (in eval mode), the exported model and the folded model on the same inputs:
torch vs onnx, torch vs folded, onnx vs folded must all be within tolerance.

Exporters (`exporter=`):
  torchscript (default)  torch.onnx.export(dynamo=False, training=TrainingMode.PRESERVE) on the eval() module: BN
                         nodes stay (training_mode=0). With the exporter's own default, training=EVAL, its constant
                         folding fuses Conv+BN, but not ConvTranspose+BN, Gemm/MatMul+BN, BN before a conv, or a BN
                         whose conv has several consumers. Honours opsets below 18; deprecated by PyTorch.
  dynamo                 torch.onnx.export(dynamo=True, optimize=False): with optimize=True, onnxscript's optimizer
                         fuses Conv/ConvTranspose/Gemm+BN. With it off, the graph computes constants at run time
                         (a zero bias for every bias-less conv: Shape(weight) -> Expand -> CastLike(0, x) -> Expand;
                         reduction axes through Reshape), the zero bias of a bias-less Conv3d has the wrong shape
                         ([C, 2]: ONNX Runtime refuses it; onnxscript 0.7), and the lowest opset is 18 (its version
                         converter cannot take every graph down to 17). `_clean_dynamo_graph` repairs the first two.

torch and onnxscript are imported inside the functions here, and no other bnfold module imports this one at
import time: bnfold works without PyTorch, and only exporting asks for it.

Over 300 lines on purpose: two exporters, their cleanup and the three-way comparison with PyTorch are one
export.
"""

from __future__ import annotations

import contextlib
import io as text_io
import logging
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import onnx

from .loading import check_model, load_model
from .saving import save_model
from .errors import ExportError, InvalidModelError, MissingDependencyError, UsageError, VerificationFailed
from .folding import count_ops, fold as fold_model
from .report import FoldReport
from .checking.compare import Tolerance, compare_outputs
from .checking.result import VerifyResult
from .checking.run import run_model
from .tables import format_table

EXPORTERS = ("torchscript", "dynamo")
DEFAULT_EXPORTER = "torchscript"  # keeps every BN on all zoo models at opset 17 and runs without repairs
DEFAULT_OPSETS = {"torchscript": 17, "dynamo": 18}  # the dynamo exporter implements nothing below opset 18
DYNAMO_MIN_OPSET = 18
BATCH_DIM = "batch"
INSTALL_TORCH = "pip install 'bnfold[torch]'"

TORCH_LABEL = "torch (eval)"
ONNX_LABEL = "onnx (exported)"
FOLDED_LABEL = "onnx (folded)"
PAIRS = {  # comparison name -> (reference, candidate)
    "torch vs onnx": (TORCH_LABEL, ONNX_LABEL),
    "torch vs folded": (TORCH_LABEL, FOLDED_LABEL),
    "onnx vs folded": (ONNX_LABEL, FOLDED_LABEL),
}
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def import_torch():
    """torch, or MissingDependencyError with the one-line install hint."""
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(f"PyTorch is not installed: {INSTALL_TORCH}") from None
    return torch


def load_module_factory(target: str) -> Callable:
    """'pkg.models:build_net' -> the callable `build_net` of module pkg.models (the user's code is imported)."""
    module_name, _, attribute_path = target.partition(":")
    if not module_name or not attribute_path:
        raise UsageError(f"bad target {target!r}: expected MODULE:CALLABLE such as mypkg.models:build_net")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"cannot import {module_name!r} for {target}: {error}") from None
    except Exception as error:  # the user's module raised while being imported
        raise ExportError(f"importing {module_name!r} for {target} failed: {_one_line(error)}") from None
    factory = module
    for attribute in attribute_path.split("."):
        if not hasattr(factory, attribute):
            raise UsageError(f"{module_name!r} has no attribute {attribute_path!r} (target {target})")
        factory = getattr(factory, attribute)
    if not callable(factory):
        raise UsageError(f"{target} is a {type(factory).__name__}, not a callable returning an nn.Module")
    return factory


def build_module(target: str):
    """Call the factory named by `target` with no arguments and check that it returns an nn.Module."""
    torch = import_torch()
    factory = load_module_factory(target)
    try:
        module = factory()
    except Exception as error:
        raise ExportError(f"calling {target}() failed: {_one_line(error)}") from None
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"{target}() returned a {type(module).__name__}, not a torch.nn.Module")
    return module


@dataclass
class ExportResult:
    """What `export` did. Unpacks as `(model, fold_report)`: `onnx_model, report = bnfold.export(...)`.

    model: what was (or would be) written, the folded model when fold=True, else the export.
    bn_calls: BatchNorm module calls in one PyTorch forward; bn_nodes: BatchNormalization nodes in the export.
    comparisons: "torch vs onnx" always, plus "torch vs folded" and "onnx vs folded" when folding.
    """

    model: onnx.ModelProto
    exported_model: onnx.ModelProto
    fold_report: Optional[FoldReport]
    module_name: str
    exporter: str
    opset: int
    dynamic_batch: bool
    was_training: bool
    bn_calls: int
    bn_nodes: int
    comparisons: Dict[str, VerifyResult] = field(default_factory=dict)
    path: Optional[str] = None
    written: bool = False

    def __iter__(self):
        return iter((self.model, self.fold_report))

    @property
    def passed(self) -> bool:
        return all(comparison.passed for comparison in self.comparisons.values())

    @property
    def failed_pairs(self) -> List[str]:
        return [name for name, comparison in self.comparisons.items() if not comparison.passed]

    @property
    def bn_folded_by_exporter(self) -> int:
        """BatchNorm calls with no BatchNormalization node in the export: the exporter fused or dropped them."""
        return max(0, self.bn_calls - self.bn_nodes)

    def to_dict(self) -> dict:
        return {
            "module": self.module_name,
            "exporter": self.exporter,
            "opset": self.opset,
            "dynamic_batch": self.dynamic_batch,
            "module_was_training": self.was_training,
            "bn_calls_in_torch": self.bn_calls,
            "bn_nodes_exported": self.bn_nodes,
            "bn_folded_by_exporter": self.bn_folded_by_exporter,
            "fold": self.fold_report.to_dict() if self.fold_report is not None else None,
            "comparisons": {name: comparison.to_dict() for name, comparison in self.comparisons.items()},
            "passed": self.passed,
            "path": self.path,
            "written": self.written,
        }

    def render(self) -> str:
        """What happened, in order: export, BN count, fold report, the three-way table, failing pairs in full."""
        shape = ", dynamic batch" if self.dynamic_batch else ""
        was = "; it was in training mode" if self.was_training else ""
        lines = [
            f"exported {self.module_name} with the {self.exporter} exporter (opset {self.opset}{shape})",
            f"module put in eval() for export, so BatchNorm uses its running statistics{was}",
            f"BatchNorm: {self.bn_calls} call(s) in PyTorch, {self.bn_nodes} BatchNormalization node(s) in the export",
        ]
        if self.bn_folded_by_exporter:
            lines.append(
                f"  warning: {self.bn_folded_by_exporter} BatchNorm call(s) have no node in the export: the exporter "
                "fused or removed them itself, so bnfold cannot report on them"
            )
        if self.fold_report is not None:
            lines += ["", self.fold_report.render()]
        lines += ["", _comparison_table(self.comparisons)]
        for name in self.failed_pairs:
            lines += ["", f"== {name} ==", self.comparisons[name].summary()]
        lines.append("")
        if self.written:
            lines.append(f"wrote {self.path}" + (" (folded)" if self.fold_report is not None else ""))
        elif self.path:
            lines.append(f"{self.path} not written")
        return "\n".join(lines)


def _comparison_table(comparisons: Dict[str, VerifyResult]) -> str:
    """One row per compared pair: its worst output's figures, and what decided the verdict: an element passes when
    |err| <= atol + rtol*|ref|, so the pair passes when the smallest atol passing every element at the rtol used
    ("atol needed") is within the atol allowed (VerifyResult.summary() has every output)."""
    header = ["pair", "max abs", "min cosine", "atol needed / allowed (at rtol)", "outside tol", "result"]
    rows = []
    for name, comparison in comparisons.items():
        outputs = comparison.outputs
        measured = [output for output in outputs if output.problem is None and output.min_atol is not None]
        deciding = max(measured, key=_atol_used_share, default=None)
        rows.append([
            name,
            _worst(max, [output.max_abs_error for output in measured]),
            _worst(min, [output.cosine_similarity for output in measured], "{:.8f}"),
            f"{deciding.min_atol:.2e} / {deciding.atol:.0e} (rtol {deciding.rtol:.0e})" if deciding else "-",
            f"{sum(output.mismatched for output in outputs)}/{sum(output.elements for output in outputs)}",
            "ok" if comparison.passed else "FAIL",
        ])
    table = format_table(header, rows)
    verdict = "PASSED" if all(row[-1] == "ok" for row in rows) else "FAILED"
    return "\n".join(table + [f"{verdict}: {len(rows)} comparison(s) on the same inputs; an element passes when "
                                "|err| <= atol + rtol*|ref|"])


def _atol_used_share(output) -> float:
    """How much of its atol an output needs (above 1: it fails); exact outputs (atol 0) by their needed atol."""
    return output.min_atol / output.atol if output.atol else output.min_atol


def _worst(pick, values, form: str = "{:.2e}") -> str:
    return form.format(pick(values)) if values else "-"


def export(
    module,
    example_inputs,
    path=None,
    *,
    fold: bool = False,
    exporter: str = DEFAULT_EXPORTER,
    opset: Optional[int] = None,
    dynamic_batch: bool = False,
    input_names: Optional[Sequence[str]] = None,
    output_names: Optional[Sequence[str]] = None,
    atol: Tolerance = None,
    rtol: Tolerance = None,
    force: bool = False,
) -> ExportResult:
    """Export `module` (in eval mode) to ONNX with every BatchNorm kept; with fold=True fold it with bnfold's rules.

    example_inputs: a tensor or a tuple of tensors (the forward's positional arguments). opset: default 17 for
    torchscript, 18 for dynamo. dynamic_batch: dim 0 of every input and output is named 'batch'. Default names
    are input/output, or input_0, input_1, ... when there are several.

    The PyTorch module, the export and (with fold) the folded model run on `example_inputs` and are compared
    pairwise with bnfold.verify's tolerances (atol/rtol as there). When a pair is out of tolerance nothing is
    written (unless force=True) and VerificationFailed is raised with the ExportResult as `.result`. The module's
    train/eval state is restored afterwards.
    """
    torch = import_torch()
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"export needs a torch.nn.Module, got {type(module).__name__}")
    opset = opset or DEFAULT_OPSETS[exporter]
    module_name = type(module).__name__
    inputs = _input_tuple(example_inputs, torch)
    input_names = _names(input_names, "input", len(inputs), "input")

    modes = {submodule: submodule.training for submodule in module.modules()}
    was_training = any(modes.values())
    module.eval()
    try:
        torch_outputs, bn_calls = _run_torch(module, inputs, torch)
        output_names = _names(output_names, "output", len(torch_outputs), "output")
        export_function = _export_dynamo if exporter == "dynamo" else _export_torchscript
        exported = export_function(module, inputs, opset, input_names, output_names, dynamic_batch, torch)
    finally:
        for submodule, training in modes.items():
            submodule.train(training)
    if dynamic_batch:
        _check_dynamic_batch(exported, input_names, exporter, module_name)
    try:
        check_model(exported)
    except InvalidModelError as error:
        raise ExportError(f"the {exporter} exporter produced an invalid model for {module_name}: {error}") from None

    graph_input_names = {value.name for value in exported.graph.input}
    feeds = {name: tensor for name, tensor in zip(input_names, _to_numpy(inputs)) if name in graph_input_names}
    reference = dict(zip(output_names, torch_outputs))
    exported_outputs = run_model(exported, feeds)
    outputs = {TORCH_LABEL: reference, ONNX_LABEL: exported_outputs}
    result = ExportResult(
        model=exported, exported_model=exported, fold_report=None, module_name=module_name, exporter=exporter,
        opset=opset, dynamic_batch=dynamic_batch, was_training=was_training, bn_calls=bn_calls,
        bn_nodes=count_ops(exported).get("BatchNormalization", 0), path=None if path is None else str(path),
    )
    if fold:
        result.model, result.fold_report = fold_model(exported)
        result.fold_report.source = f"{module_name} ({exporter} export)"
        result.fold_report.destination = result.path
        outputs[FOLDED_LABEL] = run_model(result.model, feeds)
    for name, (reference_label, candidate_label) in PAIRS.items():
        if candidate_label in outputs:
            result.comparisons[name] = compare_outputs(
                outputs[reference_label], outputs[candidate_label], atol=atol, rtol=rtol,
                reference_label=reference_label, candidate_label=candidate_label,
            )
    if not result.passed and not force:
        raise VerificationFailed(
            f"{', '.join(result.failed_pairs)}: outputs differ beyond tolerance; nothing written "
            "(--force / force=True writes it anyway)", result,
        )
    if path is not None:
        save_model(result.model, path)
        result.written = True
        if result.fold_report is not None:
            result.fold_report.written = True
    return result


def _input_tuple(example_inputs, torch) -> tuple:
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if not inputs or not all(isinstance(value, torch.Tensor) for value in inputs):
        raise UsageError("example_inputs must be a tensor or a non-empty tuple of tensors (the forward's arguments)")
    return inputs


def _names(given: Optional[Sequence[str]], stem: str, count: int, what: str) -> List[str]:
    if not given:
        return [stem] if count == 1 else [f"{stem}_{index}" for index in range(count)]
    given = list(given)
    if len(given) != count or len(set(given)) != count:
        raise UsageError(f"{len(given)} {what} name(s) {given} given, but the module has {count} {what}(s); "
                         "give one distinct name per " + what)
    return given


def _run_torch(module, inputs: tuple, torch):
    """The eval-mode outputs as numpy arrays (flattened in the exporters' order) and the BatchNorm calls made."""
    calls = []
    hooks = [
        layer.register_forward_hook(lambda *_: calls.append(1))
        for layer in module.modules()
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm)
    ]
    try:
        with torch.no_grad():
            outputs = module(*inputs)
    except Exception as error:
        raise ExportError(f"{type(module).__name__} failed to run on the example inputs: {_one_line(error)}") from None
    finally:
        for hook in hooks:
            hook.remove()
    tensors = _flatten_tensors(outputs, torch)
    if not tensors:
        raise ExportError(f"{type(module).__name__} returned no tensors; there is nothing to export")
    return _to_numpy(tensors), len(calls)


def _flatten_tensors(value, torch) -> list:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [tensor for item in value for tensor in _flatten_tensors(item, torch)]
    return []


def _to_numpy(tensors) -> List[np.ndarray]:
    return [tensor.detach().cpu().numpy() for tensor in tensors]


@contextlib.contextmanager
def _quiet_exporter():
    """Keep the exporters' prints, warnings and log lines out of the user's terminal (and out of --json)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(text_io.StringIO()), \
                contextlib.redirect_stderr(text_io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export_torchscript(module, inputs, opset, input_names, output_names, dynamic_batch, torch) -> onnx.ModelProto:
    """TrainingMode.PRESERVE on an eval() module: BN nodes stay, where EVAL would let constant folding fuse them."""
    dynamic_axes = {name: {0: BATCH_DIM} for name in [*input_names, *output_names]} if dynamic_batch else None
    with tempfile.TemporaryDirectory(prefix="bnfold-export-") as directory:
        target = Path(directory) / "model.onnx"
        try:
            with _quiet_exporter():
                torch.onnx.export(
                    module, inputs, str(target), dynamo=False, opset_version=opset,
                    training=torch.onnx.TrainingMode.PRESERVE, input_names=input_names, output_names=output_names,
                    dynamic_axes=dynamic_axes,
                )
        except Exception as error:
            raise _export_error(module, "torchscript", error) from None
        return load_model(target)


def _export_dynamo(module, inputs, opset, input_names, output_names, dynamic_batch, torch) -> onnx.ModelProto:
    """optimize=False, so onnxscript's optimizer does not fuse BN; then bnfold's own cleanup and opset conversion."""
    try:
        import onnx_ir
        import onnxscript  # noqa: F401 - the dynamo exporter needs it; fail with the install hint, not deep inside
    except ImportError:
        raise MissingDependencyError(f"the dynamo exporter needs onnxscript: {INSTALL_TORCH}") from None
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim(BATCH_DIM)
        dynamic_shapes = tuple({0: batch} if tensor.dim() else None for tensor in inputs)
        inputs = _batch_of_two(inputs, torch)
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                module, inputs, dynamo=True, opset_version=max(opset, DYNAMO_MIN_OPSET), optimize=False,
                verbose=False, input_names=input_names, output_names=output_names, dynamic_shapes=dynamic_shapes,
            )
    except Exception as error:
        raise _export_error(module, "dynamo", error) from None
    _clean_dynamo_graph(program.model)
    model = onnx_ir.serde.serialize_model(program.model)
    if opset < DYNAMO_MIN_OPSET:
        model = _convert_opset(model, opset, type(module).__name__)
    return model


def _batch_of_two(inputs, torch) -> tuple:
    """The example inputs with a batch of 1 doubled: torch.export specialises a dim of size 1 to the constant 1, so
    a batch-1 example would export a fixed batch however the dim is declared. The values do not matter here: the
    comparison runs on the caller's own inputs."""
    return tuple(torch.cat([tensor, tensor]) if tensor.dim() and tensor.shape[0] == 1 else tensor for tensor in inputs)


def _check_dynamic_batch(model: onnx.ModelProto, input_names: Sequence[str], exporter: str, module_name: str) -> None:
    """Refuse an export asked for with a dynamic batch whose inputs still have a fixed first dim."""
    fixed = []
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
        if value.name in input_names and len(dims) and dims[0].HasField("dim_value"):
            shape = ", ".join(str(d.dim_value) if d.HasField("dim_value") else d.dim_param for d in dims)
            fixed.append(f"{value.name!r} [{shape}]")
    if fixed:
        raise ExportError(
            f"a dynamic batch was asked, but the {exporter} exporter fixed the batch of {module_name}'s input(s) "
            f"{', '.join(fixed)} (its forward may depend on the batch size); export without --dynamic-batch, or "
            "make the forward independent of the batch size"
        )


def _clean_dynamo_graph(model) -> None:
    """Repair what the dynamo exporter leaves with optimize=False, folding no BatchNormalization (onnx_ir, in place).

    Constant folding turns run-time constants (zero biases from Shape -> Expand -> CastLike -> Expand, Reshape'd
    reduction axes) into values; an all-zero Conv/ConvTranspose bias is then dropped, which is exact and also
    removes the wrongly shaped zero bias the exporter gives a bias-less Conv3d. Constants become initializers, as
    in the torchscript exporter's output, so fold rules find every weight in one place.
    """
    import onnx_ir
    import onnx_ir.passes.common as common_passes
    from onnxscript import optimizer

    optimizer.fold_constants(model)
    for node in onnx_ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type in ("Conv", "ConvTranspose") and node.domain == "" and len(node.inputs) == 3:
            bias = node.inputs[2]
            tensor = onnx_ir.convenience.get_const_tensor(bias) if bias is not None else None
            if tensor is not None and not np.any(tensor.numpy()):
                node.resize_inputs(2)
    common_passes.RemoveUnusedNodesPass()(model)
    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)


def _convert_opset(model: onnx.ModelProto, opset: int, module_name: str) -> onnx.ModelProto:
    """onnx's version converter from the dynamo exporter's opset 18 down to `opset`; refuse what it gets wrong."""
    try:
        converted = onnx.version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted)
    except Exception as error:
        raise ExportError(
            f"the dynamo exporter emits opset {DYNAMO_MIN_OPSET} or later, and onnx's version converter could not "
            f"take {module_name} down to opset {opset} ({_one_line(error)}); use opset {DYNAMO_MIN_OPSET}+ or the "
            "torchscript exporter"
        ) from None
    return converted


def _export_error(module, exporter: str, error: Exception) -> ExportError:
    """ExportError naming the module and the root cause: the exporters wrap it in generic 'step N/3' errors."""
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return ExportError(f"the {exporter} exporter failed on {type(module).__name__}: {_one_line(cause)}")


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = _ANSI_ESCAPE.sub("", str(error)).strip()
    first = text.splitlines()[0].strip() if text else ""
    message = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return message if len(message) <= limit else message[: limit - 3] + "..."
