"""PyTorch -> ONNX with every BatchNorm kept, folded by bnfold's own rules, checked against PyTorch three ways.

    model, report = bnfold.export(module, example_inputs, "net.onnx", fold=True)

PyTorch's exporters fold some BatchNorms on their own and leave others, without saying which. bnfold exports so
that every BatchNormalization survives, folds with its rules (each BN folded or kept with a reason), and runs the
PyTorch module (in eval mode), the exported model and the folded model on the same inputs:
torch vs onnx, torch vs folded, onnx vs folded must all be within tolerance.

The two exporters and their repairs are in bnfold.torch_exporters.

torch and onnxscript are imported inside the functions here, and no other bnfold module imports this one at
import time: bnfold works without PyTorch, and only exporting asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import onnx

from .loading import check_model
from .saving import save_model
from .errors import ExportError, InvalidModelError, MissingDependencyError, UsageError, VerificationFailed
from .folding import count_ops, fold as fold_onnx
from .report import FoldReport
from .checking.compare import compare_outputs
from .checking.tolerance import Tolerance
from .checking.result import VerifyResult
from .checking.run import run_model
from .tables import format_table
from .torch_batchnorm import batchnorm_modules, has_initial_statistics, randomized_batchnorm
from .torch_exporters import (INSTALL_TORCH, check_dynamic_batch, export_dynamo, export_torchscript,  # noqa: F401
                              one_line)

EXPORTERS = ("torchscript", "dynamo")
DEFAULT_EXPORTER = "torchscript"  # keeps every BN on all zoo models at opset 17 and runs without repairs
DEFAULT_OPSETS = {"torchscript": 17, "dynamo": 18}  # the dynamo exporter implements nothing below opset 18

TORCH_LABEL = "torch (eval)"
ONNX_LABEL = "onnx (exported)"
FOLDED_LABEL = "onnx (folded)"
PAIRS = {  # comparison name -> (reference, candidate)
    "torch vs onnx": (TORCH_LABEL, ONNX_LABEL),
    "torch vs folded": (TORCH_LABEL, FOLDED_LABEL),
    "onnx vs folded": (ONNX_LABEL, FOLDED_LABEL),
}


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
        raise ExportError(f"importing {module_name!r} for {target} failed: {one_line(error)}") from None
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
        raise ExportError(f"calling {target}() failed: {one_line(error)}") from None
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"{target}() returned a {type(module).__name__}, not a torch.nn.Module")
    return module


@dataclass
class ExportResult:
    """What `export` did. Unpacks as `(model, fold_report)`: `onnx_model, report = bnfold.export(...)`.

    model: what was (or would be) written, the folded model when fold=True, else the export.
    bn_calls: BatchNorm module calls in one PyTorch forward; bn_nodes: BatchNormalization nodes in the export.
    bn_initial_statistics: BatchNorm modules still holding a fresh module's statistics (mean 0, var 1), whose fold
    is nearly the identity, so the comparisons say little; bn_randomized_seed: the seed randomize_bn used.
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
    bn_modules: int = 0
    bn_initial_statistics: int = 0
    bn_randomized_seed: Optional[int] = None

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
            "bn_modules": self.bn_modules,
            "bn_initial_statistics": self.bn_initial_statistics,
            "bn_randomized": self.bn_randomized_seed is not None,
            "bn_randomized_seed": self.bn_randomized_seed,
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
        lines += self._statistics_lines()
        if self.fold_report is not None:
            lines += ["", self.fold_report.render()]
        lines += ["", _comparison_table(self.comparisons)]
        for name in self.failed_pairs:
            lines += ["", f"== {name} ==", self.comparisons[name].summary()]
        lines.append("")
        if self.written:
            randomized = ", BatchNorm statistics randomized" if self.bn_randomized_seed is not None else ""
            folded = ", folded" if self.fold_report is not None else ""
            lines.append(f"wrote {self.path}" + (f" ({(folded + randomized)[2:]})" if folded or randomized else ""))
        elif self.path:
            lines.append(f"{self.path} not written")
        return "\n".join(lines)

    def _statistics_lines(self) -> List[str]:
        """Whether the BN statistics make the comparison mean something."""
        if self.bn_randomized_seed is not None:
            return [f"BatchNorm statistics and affine parameters of {self.bn_modules} module(s) randomized (seed "
                    f"{self.bn_randomized_seed}) in a copy of the module: the model exported has them, not yours"]
        if not self.bn_initial_statistics:
            return []
        every = "every BatchNorm holds" if self.bn_initial_statistics == self.bn_modules else \
            f"{self.bn_initial_statistics} of {self.bn_modules} BatchNorms hold"
        return [f"  note: {every} a fresh module's statistics (mean 0, var 1), so folding it only scales by "
                "1/sqrt(1 + eps) and the comparisons prove little; --randomize-bn (randomize_bn=True) exports a "
                "copy with random statistics to prove the export path"]


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
    randomize_bn: bool = False,
    randomize_seed: int = 0,
) -> ExportResult:
    """Export `module` (in eval mode) to ONNX with every BatchNorm kept; with fold=True fold it with bnfold's rules.

    example_inputs: a tensor or a tuple of tensors (the forward's positional arguments). opset: default 17 for
    torchscript, 18 for dynamo. dynamic_batch: dim 0 of every input and output is named 'batch'. Default names
    are input/output, or input_0, input_1, ... when there are several.

    The PyTorch module, the export and (with fold) the folded model run on `example_inputs` and are compared
    pairwise with bnfold.verify's tolerances (atol/rtol as there). When a pair is out of tolerance nothing is
    written (unless force=True) and VerificationFailed is raised with the ExportResult as `.result`. The module's
    train/eval state is restored afterwards.

    randomize_bn: export a copy of the module whose BatchNorms get random running statistics and affine parameters
    (seeded by randomize_seed; `module` itself is not changed), so that a freshly built model, whose statistics
    (mean 0, var 1) make every fold nearly the identity, still proves the export and fold path.
    """
    torch = import_torch()
    if exporter not in EXPORTERS:
        raise UsageError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"export needs a torch.nn.Module, got {type(module).__name__}")
    opset = opset or DEFAULT_OPSETS[exporter]
    module_name = type(module).__name__
    if randomize_bn:
        module = randomized_batchnorm(module, randomize_seed, torch)
    batchnorms = batchnorm_modules(module, torch)
    inputs = _input_tuple(example_inputs, torch)
    input_names = _names(input_names, "input", len(inputs), "input")

    modes = {submodule: submodule.training for submodule in module.modules()}
    was_training = any(modes.values())
    module.eval()
    try:
        torch_outputs, bn_calls = _run_torch(module, inputs, torch)
        output_names = _names(output_names, "output", len(torch_outputs), "output")
        export_function = export_dynamo if exporter == "dynamo" else export_torchscript
        exported = export_function(module, inputs, opset, input_names, output_names, dynamic_batch, torch)
    finally:
        for submodule, training in modes.items():
            submodule.train(training)
    if dynamic_batch:
        check_dynamic_batch(exported, input_names, exporter, module_name)
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
        bn_modules=len(batchnorms), bn_initial_statistics=sum(map(has_initial_statistics, batchnorms)),
        bn_randomized_seed=randomize_seed if randomize_bn else None,
    )
    if fold:
        result.model, result.fold_report = fold_onnx(exported)
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
    hooks = [layer.register_forward_hook(lambda *_: calls.append(1)) for layer in batchnorm_modules(module, torch)]
    try:
        with torch.no_grad():
            outputs = module(*inputs)
    except Exception as error:
        raise ExportError(f"{type(module).__name__} failed to run on the example inputs: {one_line(error)}") from None
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
