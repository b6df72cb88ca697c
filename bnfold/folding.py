"""The fold driver: every BatchNormalization, in every graph, is offered to the rules in registry order."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import onnx
import onnx.inliner
from onnx import helper

from .loading import load_checked_model, load_model
from .saving import save_model
from .tensors import tensor_bytes
from .errors import InvalidModelError, OutputError, UsageError, VerificationFailed
from .graph import GraphContext, all_names, node_label, subgraphs
from .report import BnDecision, FoldReport
from .rules import BN_ANCHORS, REGISTRY, RULE_NAMES
from .rules.base import Refuse, read_batchnorm
from .shapes import tensor_types

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class FoldOptions:
    """fold_input_initializers: treat initializers that are also graph inputs (IR >= 4) as constants.
    skip: rule names (see bnfold.rules.RULE_NAMES) not to apply.
    inline_functions: inline model-local functions first, so BNs fed by function inputs fold per call site."""

    fold_input_initializers: bool = False
    skip: Tuple[str, ...] = ()
    inline_functions: bool = False

    def __post_init__(self):
        unknown = sorted(set(self.skip) - set(RULE_NAMES))
        if unknown:
            raise UsageError(f"unknown rule(s) {unknown}; rules are: {', '.join(RULE_NAMES)}")


def default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in DEFAULT_DOMAINS:
            return opset.version
    return onnx.defs.onnx_opset_version()


def count_ops(model: onnx.ModelProto) -> Dict[str, int]:
    """Op types over the main graph, its subgraphs and model-local functions."""
    counts: Counter = Counter()

    def visit(nodes: Iterable[onnx.NodeProto]) -> None:
        for node in nodes:
            counts[node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"] += 1
            for sub in subgraphs(node):
                visit(sub.node)

    visit(model.graph.node)
    for function in model.functions:
        visit(function.node)
    return dict(counts)


class _Folder:
    """Walks one model's graphs and records a decision for every BatchNormalization."""

    def __init__(self, model: onnx.ModelProto, options: FoldOptions):
        self.model = model
        self.options = options
        self.opset = default_opset(model)
        self.names = all_names(model)
        self.types = tensor_types(model)
        rules = [rule for rule in REGISTRY if rule.NAME not in options.skip]
        self.bn_rules = [rule for rule in rules if rule.ANCHORS == BN_ANCHORS]
        self.other_rules = [rule for rule in rules if rule.ANCHORS != BN_ANCHORS]
        self.other_anchors = {op for rule in self.other_rules for op in rule.ANCHORS}
        self.decisions = []

    def run(self) -> None:
        self.fold_graph(self.model.graph, parent=None, path="main")
        for function in self.model.functions:
            self.fold_function(function)

    def fold_function(self, function: onnx.FunctionProto) -> None:
        """Fold inside a model-local function body. The body is shared by every call site, so only BNs whose
        weights and parameters are constants of the body fold; ones fed by function inputs differ per call site
        and stay (--inline-functions folds them per call site)."""
        body = helper.make_graph(list(function.node), function.name,
                                 [helper.make_value_info(name, onnx.TypeProto()) for name in function.input],
                                 [helper.make_value_info(name, onnx.TypeProto()) for name in function.output])
        self.fold_graph(body, parent=None, path=f"function {function.domain}.{function.name}", function=True)
        del function.node[:]
        function.node.extend(body.node)

    def fold_graph(self, graph: onnx.GraphProto, parent: Optional[GraphContext], path: str,
                   function: bool = False) -> None:
        ctx = GraphContext(graph, ir_version=self.model.ir_version, names=self.names, parent=parent, path=path,
                           fold_input_initializers=self.options.fold_input_initializers, types=self.types,
                           function=function, opset=self.opset)
        for node in ctx.nodes:
            if ctx.is_removed(node) or node.domain not in DEFAULT_DOMAINS:
                pass
            elif node.op_type == "BatchNormalization":
                self.decisions.append(self.fold_batchnorm(node, ctx))
            elif node.op_type in self.other_anchors:
                decision = self.fold_other_anchor(node, ctx)
                if decision is not None:
                    self.decisions.append(decision)
            for attr in node.attribute:
                bodies = [attr.g] if attr.HasField("g") else list(attr.graphs)
                for index, body in enumerate(bodies):
                    suffix = f"[{index}]" if len(bodies) > 1 else ""
                    self.fold_graph(body, ctx, f"{path}/{node_label(node)}.{attr.name}{suffix}", function)
        ctx.finish()

    def fold_batchnorm(self, node: onnx.NodeProto, ctx: GraphContext) -> BnDecision:
        decision = BnDecision(node=node.name, output=node.output[0] if node.output else "", graph=ctx.path,
                              folded=False)
        try:
            bn = read_batchnorm(node, ctx, self.opset)
        except Refuse as why:
            decision.reason = str(why)
            return decision
        if not self._try_rules(self.bn_rules, bn, ctx, decision):
            decision.reason = decision.reason or self._no_rule_reason(node, ctx)
        return decision

    def fold_other_anchor(self, node: onnx.NodeProto, ctx: GraphContext) -> Optional[BnDecision]:
        """Rules anchored on other ops (a BN decomposed into Mul/Add): a decision only where a rule recognised
        its pattern, since most Mul and Add nodes are no BN at all."""
        decision = BnDecision(node=node.name, output=node.output[0] if node.output else "", graph=ctx.path,
                              folded=False)
        rules = [rule for rule in self.other_rules if node.op_type in rule.ANCHORS]
        if self._try_rules(rules, node, ctx, decision) or decision.reason:
            return decision
        return None

    @staticmethod
    def _try_rules(rules, subject, ctx: GraphContext, decision: BnDecision) -> bool:
        """Apply the first rule that matches; otherwise leave the first refusal's reason in the decision."""
        for rule in rules:
            try:
                rewrite = rule.match(subject, ctx)
            except Refuse as why:
                decision.reason = decision.reason or f"{why} [{rule.NAME}]"
                continue
            if rewrite is None:
                continue
            ctx.apply(rewrite)
            decision.folded = True
            decision.reason = None
            decision.rule = rule.NAME
            decision.into = ", ".join(node_label(node) for node in rewrite.into)
            decision.into_op = "+".join(node.op_type for node in rewrite.into)
            decision.output = rewrite.output or decision.output
            decision.rounding_error = rewrite.rounding_error
            return True
        return False

    @staticmethod
    def _no_rule_reason(node: onnx.NodeProto, ctx: GraphContext) -> str:
        producer = ctx.producer(node.input[0])
        if producer is None:
            source = "a graph input" if node.input[0] in ctx.input_names else "outside this graph"
            return f"input {node.input[0]!r} comes from {source}; no rule folds a BN there"
        return f"input comes from {producer.op_type} node {node_label(producer)!r}; no rule folds that pattern"


def fold(
    model: Union[onnx.ModelProto, str, "os.PathLike[str]"],
    *,
    fold_input_initializers: bool = False,
    skip: Sequence[str] = (),
    inline_functions: bool = False,
    inplace: bool = False,
) -> Tuple[onnx.ModelProto, FoldReport]:
    """Fold every foldable eval-mode BatchNormalization; return the folded model and a report of each BN.

    `model` is a ModelProto (copied unless inplace=True) or a path. Every BN is either folded or listed in the
    report with the reason it stays; the graph's inputs, outputs, opsets and metadata are unchanged.
    """
    options = FoldOptions(fold_input_initializers=fold_input_initializers, skip=tuple(skip),
                          inline_functions=inline_functions)
    if not isinstance(model, onnx.ModelProto):
        model = load_model(model)
    elif not inplace:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    started = time.perf_counter()
    report = FoldReport(ops_before=count_ops(model), initializer_bytes_before=tensor_bytes(model))
    if options.inline_functions and model.functions:
        model = onnx.inliner.inline_local_functions(model)
    folder = _Folder(model, options)
    folder.run()
    report.decisions = folder.decisions
    report.ops_after = count_ops(model)
    report.initializer_bytes_after = tensor_bytes(model)
    report.elapsed_s = time.perf_counter() - started
    return model, report


def _same_file(a: Path, b: Path) -> bool:
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def fold_file(
    source: Union[str, "os.PathLike[str]"],
    destination: Optional[Union[str, "os.PathLike[str]"]] = None,
    *,
    verify: bool = True,
    force: bool = False,
    dry_run: bool = False,
    overwrite: bool = False,
    check: bool = True,
    external_data: Optional[bool] = None,
    verify_options: Optional[dict] = None,
    fold_input_initializers: bool = False,
    skip: Sequence[str] = (),
    inline_functions: bool = False,
) -> FoldReport:
    """Load, fold, verify (unless verify=False) and atomically write a model; return the report.

    The input is never overwritten unless `destination` names it and overwrite=True. When verification fails the
    output is not written (unless force=True) and VerificationFailed is raised, carrying `.result` and `.report`.
    """
    source = Path(source)
    if destination is None and not dry_run:
        raise UsageError("no output path: pass -o/--output (or --dry-run to only report)")
    if destination is not None and _same_file(source, Path(destination)) and not overwrite and not dry_run:
        raise OutputError(f"{destination} is the input file; pass --overwrite to replace it")
    started = time.perf_counter()
    model = load_checked_model(source, check=check)
    folded, report = fold(model, fold_input_initializers=fold_input_initializers, skip=skip,
                          inline_functions=inline_functions, inplace=True)
    report.source = str(source)
    report.destination = None if destination is None else str(destination)
    if verify and report.changed:
        from .verification import verify as verify_models

        try:
            report.verification = verify_models(str(source), folded, candidate_label="folded model (in memory)",
                                                **(verify_options or {}))
        except (UsageError, InvalidModelError) as error:
            raise type(error)(f"cannot verify the fold: {error} (or skip the check with --no-verify)") from None
        if not report.verification.passed and not force:
            report.elapsed_s = time.perf_counter() - started
            error = VerificationFailed("folded model differs from the original beyond tolerance; nothing written "
                                       "(--force writes it anyway)", report.verification)
            error.report = report
            raise error
    if not dry_run:
        save_model(folded, destination, external_data=external_data)
        report.written = True
    report.elapsed_s = time.perf_counter() - started
    return report
