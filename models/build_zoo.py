"""Export every zoo architecture with the torchscript exporter into models/zoo/<name>.onnx, every BN kept.

    python models/build_zoo.py            (or: python -m models.build_zoo)
    python models/build_zoo.py NAME...    (only those)

The files are reference inputs for `bnfold` itself: each keeps all its BatchNormalization nodes, has a dynamic
batch dimension, and was checked against its PyTorch module when written. Rerun after changing models/zoo.py.
The architectures of zoo.INITIALIZER_INPUT_EXPORTS are also written as old PyTorch exporters wrote them by
default, every initializer a graph input too (models/zoo/<name>_initializer_inputs.onnx, see
export_with_initializer_inputs).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_DIR = Path(__file__).resolve().parent / "zoo"


def export_with_initializer_inputs(module, example, path: Path, opset: int = 11) -> None:
    """torch.onnx.export as PyTorch 1.x called it by default: torchscript exporter, keep_initializers_as_inputs
    (every initializer also a graph input, IR >= 4), TrainingMode.PRESERVE on the eval() module so every BN stays.
    Batch, height and width are dynamic; the file is checked against the module in ONNX Runtime."""
    import numpy as np
    import onnxruntime
    import torch

    with torch.no_grad():
        expected = module(example)
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    outputs = [f"output{index}" for index in range(len(expected))]
    spatial = {axis: name for axis, name in zip(range(2, example.dim()), ("height", "width", "depth"))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter is deprecated: that is the point here
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=opset,
                          keep_initializers_as_inputs=True, training=torch.onnx.TrainingMode.PRESERVE,
                          do_constant_folding=False, input_names=["input"], output_names=outputs,
                          dynamic_axes={name: {0: "batch", **spatial} for name in ["input", *outputs]})
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # ORT warns once per initializer input: what this file is meant to show
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for got, want in zip(session.run(None, {"input": example.numpy()}), expected):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from bnfold.exporting import export
    from bnfold.inputs import random_array
    from models.zoo import FACTORIES, INITIALIZER_INPUT_EXPORTS, INPUT_SHAPES

    OUTPUT_DIR.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    names = sys.argv[1:] or list(FACTORIES)
    for name, factory in FACTORIES.items():
        if name not in names:
            continue
        example = torch.from_numpy(random_array(np.float32, INPUT_SHAPES[name], rng))
        path = OUTPUT_DIR / f"{name}.onnx"
        result = export(factory(), example, path, exporter="torchscript", dynamic_batch=True)
        print(f"{path.relative_to(ROOT)}: {result.bn_nodes} BatchNormalization, "
              f"{path.stat().st_size / 1024:.0f} KiB, input {'x'.join(map(str, INPUT_SHAPES[name]))}")
    for name, (factory, shape) in INITIALIZER_INPUT_EXPORTS.items():
        path = OUTPUT_DIR / f"{name}_initializer_inputs.onnx"
        export_with_initializer_inputs(factory(), torch.from_numpy(random_array(np.float32, shape, rng)), path)
        print(f"{path.relative_to(ROOT)}: every initializer also a graph input, {path.stat().st_size / 1024:.0f} KiB, "
              f"input {'x'.join(map(str, shape))}")


if __name__ == "__main__":
    main()
