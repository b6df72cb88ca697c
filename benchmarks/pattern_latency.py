"""ORT latency of original vs folded for issue 24's six fold patterns, each a models/zoo_folds.py block exported
from PyTorch (torchscript, static shape: the attention fold follows channels by position), at ORT's disabled and
default ("all") optimization levels, CPU EP. The ratio is the folded model's p50 over the original's.

    python benchmarks/pattern_latency.py                     # all six; needs torch
    python benchmarks/pattern_latency.py --only botnet_style --iterations 500 --json latency.json

The blocks are the zoo's (8 channels); the inputs are larger than the zoo's examples (batch 8, 64x64 where the
block takes any size; BoTNet's attention is built for 8x8, so batch 32 there), so per-node overhead is not all
that is timed. These are small blocks: the ratios say what removing each pattern's BNs saves relative to a block
made mostly of them, not what a whole network gains.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import bnfold  # noqa: E402  (after the path tweak, so the checkout runs without being installed)

# zoo name -> (the pattern, the input shape timed)
PATTERNS = {
    "repmixer_style": ("Sub of branches (FastViT RepMixer)", (8, 3, 64, 64)),
    "pooled_head_style": ("BN -> AvgPool -> Conv 1x1 (CoAtNet)", (8, 3, 64, 64)),
    "preact_sum_style": ("BN after Add of Convs (pre-act ResNetV2 / RegNet)", (8, 3, 64, 64)),
    "split_norm_style": ("Conv -> Split -> BN (lambda layer)", (8, 3, 32, 32)),
    "token_norm_style": ("BN -> tokens -> Linear, AvgPool1d -> BN1d (FastViT, Next-ViT)", (8, 3, 32, 32)),
    "botnet_style": ("BN after softmax(QK^T) @ V (BoTNet)", (32, 3, 8, 8)),
}


def export(name: str, shape):
    import torch

    from bnfold.exporting import export as export_module
    from models import zoo

    example = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    return export_module(zoo.FACTORIES[name](), example, exporter="torchscript").model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(PATTERNS), action="append")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--intra-op-threads", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write every bench result here, by pattern")
    args = parser.parse_args(argv)
    summary, results = [], {}
    for name in args.only or PATTERNS:
        pattern, shape = PATTERNS[name]
        original = export(name, shape)
        folded, report = bnfold.fold(original)
        rules = sorted({d.rule for d in report.decisions if d.folded} | {"merge_branches" for m in report.merged})
        result = bnfold.bench([("original", original), ("folded", folded)], providers=["cpu"],
                              opt_levels=["disable", "all"], warmup=args.warmup, iterations=args.iterations,
                              intra_op_threads=args.intra_op_threads)
        results[name] = result.to_dict()
        ratios = {row.opt_level: row.ratio for row in result.rows if row.model == "folded"}
        summary.append((name, pattern, f"{report.folded_count}/{len(report.decisions)}", ", ".join(rules),
                        ratios.get("disable"), ratios.get("all")))
        print(f"{name}: {pattern}: {report.folded_count} of {len(report.decisions)} BN folded ({', '.join(rules)})",
              flush=True)
        print(result.table(), flush=True)
    print(f"\n{'model':18} {'BN folded':>9}  {'p50 ratio, ORT disable':>22} {'p50 ratio, ORT all':>18}  pattern")
    for name, pattern, folded, rules, disable, level_all in summary:
        print(f"{name:18} {folded:>9}  {disable or float('nan'):22.3f} {level_all or float('nan'):18.3f}  {pattern}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
