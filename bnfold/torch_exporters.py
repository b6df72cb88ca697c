"""The two torch.onnx exporters, each set up so that every BatchNorm stays a BatchNormalization node, and the
repairs their output needs. bnfold.exporting runs them and compares the result with PyTorch.

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

torch, onnx_ir and onnxscript are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import io as text_io
import logging
import re
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from .errors import ExportError, MissingDependencyError
from .loading import load_model

DYNAMO_MIN_OPSET = 18
BATCH_DIM = "batch"
INSTALL_TORCH = "pip install 'bnfold[torch]'"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


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


def export_torchscript(module, inputs, opset, input_names, output_names, dynamic_batch, torch) -> onnx.ModelProto:
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


def export_dynamo(module, inputs, opset, input_names, output_names, dynamic_batch, torch) -> onnx.ModelProto:
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
        inputs = batch_of_two(inputs, torch)
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


def batch_of_two(inputs, torch) -> tuple:
    """The example inputs with a batch of 1 doubled: torch.export specialises a dim of size 1 to the constant 1, so
    a batch-1 example would export a fixed batch however the dim is declared. The values do not matter here: the
    comparison runs on the caller's own inputs."""
    return tuple(torch.cat([tensor, tensor]) if tensor.dim() and tensor.shape[0] == 1 else tensor for tensor in inputs)


def check_dynamic_batch(model: onnx.ModelProto, input_names: Sequence[str], exporter: str, module_name: str) -> None:
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
            f"take {module_name} down to opset {opset} ({one_line(error)}); use opset {DYNAMO_MIN_OPSET}+ or the "
            "torchscript exporter"
        ) from None
    return converted


def _export_error(module, exporter: str, error: Exception) -> ExportError:
    """ExportError naming the module and the root cause: the exporters wrap it in generic 'step N/3' errors."""
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return ExportError(f"the {exporter} exporter failed on {type(module).__name__}: {one_line(cause)}")


def one_line(error: BaseException, limit: int = 300) -> str:
    text = _ANSI_ESCAPE.sub("", str(error)).strip()
    first = text.splitlines()[0].strip() if text else ""
    message = f"{type(error).__name__}: {first}" if first else type(error).__name__
    return message if len(message) <= limit else message[: limit - 3] + "..."
