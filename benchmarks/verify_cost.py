"""What the default check costs: the fold command with its check against `bnfold verify` and `--no-verify`.

    python benchmarks/verify_cost.py [--repeats 3] [--models wide_detector,resnet50] [--cache DIR]

Models (built once, cached in --cache): a detector-sized model on a fixed 1x3x800x800 input with about 400
intermediates (models/check_fixtures.wide_detector), and the ResNet-50-sized classifier of fold_speed.py (98 MB,
53 BN, 1x3x224x224). Each command runs as a whole process, interleaved, `--repeats` times; the table gives the
median and the range of wall time and of peak RSS, and the ratios the issue set as targets:

- default command peak RSS / `bnfold verify ORIG FOLDED` peak RSS (target <= 1.5), and <= 1 GiB on the detector;
- default command wall time / `--no-verify` wall time (target <= 2 on the ResNet-50-sized model).

The environment (Python, onnx, onnxruntime, numpy, cores) is printed with the figures. Machines are noisy: read
the ratios, and every run, not the best one.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from fold_speed import cached_model, measure  # noqa: E402

MODELS = ("wide_detector", "resnet50")


def build(name: str, path: Path) -> None:
    import onnx

    from fold_speed import MODELS as CLASSIFIERS
    from models.check_fixtures import wide_detector

    onnx.save(wide_detector() if name == "wide_detector" else CLASSIFIERS[name][0](), path)


def environment() -> str:
    import numpy
    import onnx
    import onnxruntime

    return (f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores; onnx "
            f"{onnx.__version__}, onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bnfold-bench-models")
    parser.add_argument("--build", nargs=2, metavar=("NAME", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build(args.build[0], Path(args.build[1]))
        return
    print(environment())
    workdir = Path(tempfile.mkdtemp(prefix="bnfold-verify-cost-"))
    bnfold = [sys.executable, "-m", "bnfold"]
    for name in args.models.split(","):
        source = cached_model(name, args.cache, script=__file__)
        folded = workdir / f"{name}.folded.onnx"
        commands = {
            "--no-verify": [*bnfold, str(source), "-o", str(workdir / f"{name}.nv.onnx"), "--no-verify", "-q"],
            "default (fold + check)": [*bnfold, str(source), "-o", str(folded), "-q"],
            "bnfold verify ORIG FOLDED": [*bnfold, "verify", str(source), str(folded)],
        }
        runs = {label: [] for label in commands}
        for _ in range(args.repeats):
            for label, command in commands.items():  # in order: verify reads what the default command wrote
                runs[label].append(measure(command))
        print(f"\n{name} ({source.stat().st_size / 2**20:.1f} MiB)")
        print(f"{'command':<28} {'wall s (median, range)':<26} {'peak RSS MiB (median, range)':<30}")
        for label, values in runs.items():
            walls = [wall for wall, _ in values]
            peaks = [peak / 2**20 for _, peak in values]
            print(f"{label:<28} {statistics.median(walls):6.2f} ({min(walls):.2f}-{max(walls):.2f})"
                  f"{'':<10} {statistics.median(peaks):7.0f} ({min(peaks):.0f}-{max(peaks):.0f})")
        default = runs["default (fold + check)"]
        verify = runs["bnfold verify ORIG FOLDED"]
        no_verify = runs["--no-verify"]
        rss_ratio = [d[1] / v[1] for d, v in zip(default, verify)]
        time_ratio = [d[0] / n[0] for d, n in zip(default, no_verify)]
        print(f"default / verify peak RSS: {', '.join(f'{r:.2f}' for r in rss_ratio)} (target <= 1.5)")
        print(f"default / --no-verify wall time: {', '.join(f'{r:.2f}' for r in time_ratio)}"
              + (" (target <= 2)" if name == "resnet50" else ""))


if __name__ == "__main__":
    main()
