"""Real architectures from the ONNX model zoo, as the onnx package ships them (weights built by ConstantOfShape):
DenseNet-121 and Inception-v2 (Caffe2 exports: BN followed by a Mul/Add scale layer, folded as a decomposed BN),
ResNet-50, ShuffleNet."""

from pathlib import Path

import onnx
import pytest

import bnfold

pytestmark = pytest.mark.slow  # a few hundred BNs per model: part of CI, not of the fast loop

LIGHT_MODELS = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
EXPECTED_FOLDS = {"light_densenet121": 180, "light_inception_v2": 138, "light_resnet50": 53, "light_shufflenet": 49}


@pytest.mark.parametrize("name", sorted(EXPECTED_FOLDS))
def test_model_zoo_architecture_folds_every_bn_and_stays_equivalent(name):
    path = LIGHT_MODELS / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"this onnx release does not ship {path.name}")
    folded, report = bnfold.fold(bnfold.load_model(path), standalone=True)
    folded_count = report.folded_count + sum(d.folded for d in report.decomposed)
    assert folded_count == EXPECTED_FOLDS[name] and report.kept_count == 0, report.render()
    assert "BatchNormalization" not in {node.op_type for node in folded.graph.node}
    onnx.checker.check_model(folded)
    result = bnfold.verify(path, folded)
    assert result.passed, result.summary()
