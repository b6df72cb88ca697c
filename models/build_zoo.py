"""Export every zoo architecture with the torchscript exporter into models/zoo/<name>.onnx, every BN kept.

    python models/build_zoo.py            (or: python -m models.build_zoo)
    python models/build_zoo.py NAME...    (only those)

The files are reference inputs for `bnfold` itself: each keeps all its BatchNormalization nodes, has a dynamic
batch dimension, and was checked against its PyTorch module when written. Rerun after changing models/zoo.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_DIR = Path(__file__).resolve().parent / "zoo"


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from bnfold.exporting import export
    from bnfold.inputs import random_array
    from models.zoo import FACTORIES, INPUT_SHAPES

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


if __name__ == "__main__":
    main()
