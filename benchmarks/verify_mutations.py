"""How many wrong folds the check catches, and whether it names the BN: a mutation suite over real folds.

    python benchmarks/verify_mutations.py [--quick] [--json out.json]

Models: every model under models/zoo and models/fixtures that has a folded BN, a 12-layer chain whose activations
grow to ~1e5-1e6 (fixtures.growing_activations_net) and a detection head whose one output mixes scores (~1) and box
regressions (~1e3) (fixtures.mixed_scale_head). For each BN that bnfold folds, each mutation below is a wrong fold:
the BN's parameters are changed the way the bug would change them, and the changed original is folded, so the
folded constants are exactly those the buggy arithmetic would write:

  eps ignored               var + eps computed as var
  mean not subtracted       the running mean dropped, on every channel / on the smaller half of the channels
  two channels swapped      two channels' scale and shift exchanged
  shift off by 1%           every channel's shift moved by 1% of the shifts' range
  wrong group mapping       grouped ConvTranspose: every group scaled by the first group's channel scales

Each mutant's output error (max |mutant - original| / max(1, peak |original|), over outputs) is divided by the
correct fold's own error on the same inputs. A mutation with a ratio >= 10 must be caught; the suite prints the
detection rate, how many failures name the BN, and the smallest caught ratio, for each check in CHECKS
(end to end with intermediates, and outputs only for comparison), for the local per-fold check (the fold engine
made to compute that BN's map from the mutated parameters), and for both layers together ("either": what
`bnfold MODEL -o OUT` does); then, for every mutation whatever its output error, how many the local check and
either layer catch, by kind.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np
import onnx
from onnx import numpy_helper

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import bnfold  # noqa: E402  (after the path tweak, so the checkout runs without being installed)
from bnfold.checking.feeds import make_feeds  # noqa: E402
from bnfold.checking.run import run_model  # noqa: E402
from bnfold.inputs import graph_inputs  # noqa: E402
from models import fixtures  # noqa: E402

MUST_CATCH_RATIO = 10.0
ERROR_FLOOR = 1e-12  # a correct fold that is bit-exact still gets a finite ratio


@dataclass
class Detection:
    caught: bool
    named: bool  # the failure names the mutated BN
    detail: str = ""


def end_to_end(original: onnx.ModelProto, mutant: onnx.ModelProto, labels: Mapping[str, str], bn_name: str,
               rewritten=(), intermediates="boundaries") -> Detection:
    """bnfold.verify as `bnfold MODEL -o OUT` runs it (fold boundaries, the rest swept on a failure; fold labels and
    the tensors folds rewrote from the report)."""
    result = bnfold.verify(original, mutant, intermediates=intermediates, fold_labels=labels, rewritten=rewritten)
    named = bool(result.divergence_source and bn_name in result.divergence_source)
    detail = f"first {result.first_divergence!r} <- {result.divergence_source}" if not result.passed else ""
    return Detection(not result.passed, named, detail)


def local_check(model: onnx.ModelProto, bn_name: str, parameters: tuple, feeds, correct_error: float) -> Detection:
    """The per-fold local check as `bnfold MODEL -o OUT` runs it, against a fold engine whose arithmetic for this
    one BN is the mutation's: its map is computed from the mutated parameters while the graph keeps the real ones,
    exactly what a bug in the fold would do. Caught when the wrong fold never reaches the written model: the BN is
    kept with a failed local check, or (after the refold without it) another rule absorbed it correctly, e.g. a
    branch merge; the output error is then that of a correct fold."""
    from bnfold.rules import chain
    from bnfold.rules.affine import bn_affine

    real = chain.read_batchnorm

    def buggy(node, index):
        bn = real(node, index)
        if node.name == bn_name:
            gamma, beta, mean, var, eps = parameters
            bn.scale, bn.shift = bn_affine(gamma, beta, mean, var, eps)
        return bn

    chain.read_batchnorm = buggy  # what every rule's candidate reads its BN through
    try:
        folded, report = bnfold.fold(model)
    finally:
        chain.read_batchnorm = real
    decision = next(d for d in report.decisions if d.node == bn_name)
    named = not decision.folded and "local check failed" in (decision.reason or "")
    caught = named or output_error(model, folded, feeds) / correct_error < MUST_CATCH_RATIO
    return Detection(caught, named, decision.reason or f"absorbed by {decision.rule}")


LOCAL = "local check (per fold)"
CHECKS: Dict[str, Callable[..., Detection]] = {
    "end-to-end (as the fold command)": end_to_end,
    "end-to-end, outputs only": lambda o, m, labels, bn, rewritten: end_to_end(o, m, labels, bn, rewritten,
                                                                                intermediates=False),
}


def suite_models(quick: bool) -> Dict[str, onnx.ModelProto]:
    models = {"growing_activations_net": fixtures.growing_activations_net(),
              "mixed_scale_head": fixtures.mixed_scale_head()}
    if quick:
        return models
    for path in sorted((REPO / "models" / "zoo").glob("*.onnx")):
        models[f"zoo/{path.stem}"] = onnx.load(path)
    for path in sorted((REPO / "models" / "fixtures").glob("*.onnx")):
        if path.stem not in models:
            models[f"fixtures/{path.stem}"] = onnx.load(path)
    return models


def _bn_parameters(model: onnx.ModelProto, node: onnx.NodeProto) -> Optional[List[np.ndarray]]:
    initializers = {t.name: t for t in model.graph.initializer}
    if not all(name in initializers for name in node.input[1:5]):
        return None
    return [numpy_helper.to_array(initializers[name]).astype(np.float64) for name in node.input[1:5]]


def _epsilon(node: onnx.NodeProto) -> float:
    return next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)


def _group_of_producer(model: onnx.ModelProto, node: onnx.NodeProto) -> int:
    producer = next((n for n in model.graph.node if node.input[0] in n.output), None)
    if producer is None or producer.op_type != "ConvTranspose":
        return 1
    return next((a.i for a in producer.attribute if a.name == "group"), 1)


def mutations(model: onnx.ModelProto, node: onnx.NodeProto, rng: np.random.Generator) -> Dict[str, tuple]:
    """name -> (gamma, beta, mean, var, epsilon) of the wrong fold; see the module docstring."""
    gamma, beta, mean, var = _bn_parameters(model, node)
    eps = _epsilon(node)
    scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    channels = gamma.size
    result = {"eps ignored": (gamma, beta, mean, var, 0.0),
              "mean not subtracted (all)": (gamma, beta, np.zeros_like(mean), var, eps)}
    small = np.argsort(np.abs(gamma) + np.abs(beta))[: max(1, channels // 2)]
    subset_mean = mean.copy()
    subset_mean[small] = 0.0
    result["mean not subtracted (subset)"] = (gamma, beta, subset_mean, var, eps)
    if channels >= 2:
        i, j = rng.choice(channels, 2, replace=False)
        order = np.arange(channels)
        order[[i, j]] = order[[j, i]]
        result["two channels swapped"] = (gamma[order], beta[order], mean[order], var[order], eps)
    moved = shift + 0.01 * (shift.max() - shift.min() if channels > 1 else abs(shift[0]))
    result["shift off by 1%"] = (gamma, moved + mean * scale, mean, var, eps)
    group = _group_of_producer(model, node)
    if group > 1:
        per_group = channels // group
        wrong_scale = np.tile(scale[:per_group], group)
        wrong_gamma = wrong_scale * np.sqrt(var + eps)
        result["wrong group mapping"] = (wrong_gamma, shift + mean * wrong_scale, mean, var, eps)
    return result


def with_parameters(model: onnx.ModelProto, node_index: int, parameters: tuple) -> onnx.ModelProto:
    """A copy of `model` whose BN at node_index uses new (unshared) parameter initializers and epsilon."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    node = copy.graph.node[node_index]
    *arrays, eps = parameters
    dtype = numpy_helper.to_array(next(t for t in copy.graph.initializer if t.name == node.input[1])).dtype
    for slot, array in zip(range(1, 5), arrays):
        name = f"{node.input[slot]}__mutant"
        copy.graph.initializer.append(numpy_helper.from_array(np.asarray(array, dtype), name))
        node.input[slot] = name
    for attribute in node.attribute:
        if attribute.name == "epsilon":
            attribute.f = eps
    if not any(a.name == "epsilon" for a in node.attribute):
        node.attribute.append(onnx.helper.make_attribute("epsilon", eps))
    return copy


def output_error(original: onnx.ModelProto, other: onnx.ModelProto, feeds) -> float:
    expected, actual = run_model(original, feeds), run_model(other, feeds)
    worst = 0.0
    for name, reference in expected.items():
        reference = np.asarray(reference, np.float64)
        value = np.asarray(actual[name], np.float64)
        finite = np.isfinite(reference)
        peak = max(1.0, float(np.abs(reference[finite]).max())) if finite.any() else 1.0
        worst = max(worst, float(np.abs(value - reference)[finite].max(initial=0.0)) / peak)
    return worst


def _feeds(model: onnx.ModelProto):
    """The feeds bnfold.verify uses (seed 0), for the error measure."""
    result = bnfold.verify(model, model)
    specs = graph_inputs(model)
    return make_feeds(specs, result.input_shapes, {}, 0)


def _rewritten(report) -> list:
    return [name for decision in [*report.folded, *report.decomposed] if decision.folded
            for name in decision.rewritten]


def run_suite(models: Mapping[str, onnx.ModelProto], checks: Mapping[str, Callable[..., Detection]],
              seed: int = 0) -> List[dict]:
    """One row per (model, BN, mutation): error ratio and each check's detection."""
    rows = []
    rng = np.random.default_rng(seed)
    for model_name, model in models.items():
        folded, report = bnfold.fold(model)
        folded_nodes = {d.node for d in report.folded if d.graph == "main"}
        if not folded_nodes:
            continue
        feeds = _feeds(model)
        correct_error = max(output_error(model, folded, feeds), ERROR_FLOOR)
        correct_fails = {name: check(model, folded, {d.output: d.label for d in report.folded}, "",
                                     _rewritten(report)).caught for name, check in checks.items()}
        correct_local = any("local check failed" in (d.reason or "") for d in report.decisions)
        for index, node in enumerate(model.graph.node):
            if node.op_type != "BatchNormalization" or node.name not in folded_nodes:
                continue
            if _bn_parameters(model, node) is None:
                continue
            for mutation, parameters in mutations(model, node, rng).items():
                mutated = with_parameters(model, index, parameters)
                mutant, mutant_report = bnfold.fold(mutated)
                if node.name not in {d.node for d in mutant_report.folded}:
                    continue
                ratio = output_error(model, mutant, feeds) / correct_error
                labels = {d.output: d.label for d in mutant_report.folded}
                row = {"model": model_name, "bn": node.name, "mutation": mutation, "ratio": ratio,
                       "correct_fold_error": correct_error, "correct_fold_flagged": correct_fails,
                       "correct_fold_local": correct_local}
                for name, check in checks.items():
                    row[name] = asdict(check(model, mutant, labels, node.name, _rewritten(mutant_report)))
                row[LOCAL] = asdict(local_check(model, node.name, parameters, feeds, correct_error))
                row["either"] = asdict(Detection(row[LOCAL]["caught"] or row["end-to-end (as the fold command)"]["caught"],
                                                 row[LOCAL]["named"] or row["end-to-end (as the fold command)"]["named"]))
                rows.append(row)
    return rows


def summarize(rows: List[dict], checks) -> List[str]:
    lines = []
    must = [row for row in rows if row["ratio"] >= MUST_CATCH_RATIO]
    false_alarms = sorted({row["model"] for row in rows for name, flagged in row["correct_fold_flagged"].items()
                           if flagged})
    false_alarms += sorted({row["model"] for row in rows if row["correct_fold_local"]})
    lines.append(f"{len(rows)} mutations over {len({r['model'] for r in rows})} models, "
                 f"{len(must)} with output error >= {MUST_CATCH_RATIO:g}x the correct fold's")
    lines.append(f"correct folds flagged (false alarms): {false_alarms or 'none'}")
    for name in checks:
        caught = [row for row in must if row[name]["caught"]]
        named = [row for row in caught if row[name]["named"]]
        all_caught = [row for row in rows if row[name]["caught"]]
        smallest = min((row["ratio"] for row in all_caught), default=float("nan"))
        lines.append(f"{name:28s} detection {len(caught)}/{len(must)} = {len(caught) / max(1, len(must)):.1%}, "
                     f"BN named {len(named)}/{len(caught)}, smallest caught ratio {smallest:.3g}")
        for row in must:
            if not row[name]["caught"]:
                lines.append(f"    missed: {row['model']} {row['bn']} {row['mutation']} ratio {row['ratio']:.3g}")
    lines.append("every planted mutation, whatever its output error, by kind (local check | either layer):")
    for mutation in sorted({row["mutation"] for row in rows}):
        kind = [row for row in rows if row["mutation"] == mutation]
        local = sum(row[LOCAL]["caught"] for row in kind)
        either = sum(row["either"]["caught"] for row in kind)
        lines.append(f"  {mutation:30s} {local}/{len(kind)} | {either}/{len(kind)}  "
                     f"(output error {min(r['ratio'] for r in kind):.3g}-{max(r['ratio'] for r in kind):.3g}x "
                     f"the correct fold's)")
        for row in kind:
            if not row[LOCAL]["caught"]:
                lines.append(f"    local check missed: {row['model']} {row['bn']} ({row[LOCAL]['detail']})")
    return lines


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Only the deep chain and the mixed-scale head.")
    parser.add_argument("--json", type=Path, help="Write every row here.")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run_suite(suite_models(args.quick), CHECKS)
    for line in summarize(rows, [*CHECKS, LOCAL, "either"]):
        print(line)
    print(f"({time.perf_counter() - started:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
