"""The fold engine: every scope (main graph, each If/Loop/Scan body, each function body) with types looked up in
that scope; in each, every node in graph order is offered to the rules that take its op type (bnfold.rules.RULES,
in that order) until one folds it. A rule matches the node (or says it is not its pattern, or refuses with the
reason) and plans an Edit; the engine applies it all or nothing (graph.editor) and records the piece for the local
check. The rules and their order, fallbacks and --skip names all come from RULES: no rule is named here.

A BN (a rule reporting "decisions") gets one decision whatever happens: folded by the first rule that folds it, or
kept with the most specific reason a rule gave (a refusal of a rule whose pattern matched comes before "nothing to
fold it into"), plus what an opt-in rule would do. A refusal leaves the graph byte-identical. An exception of any
kind while a candidate is matched, planned or applied keeps it with the reason "internal error in <rule>: ...
(please report)"; the rest of the model folds as usual.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import onnx
from onnx import helper

from .checking.folds import LocalChecker
from .graph import DEFAULT_DOMAINS, Edit, GraphIndex, ModelScope, NotConstant, function_types, node_label, scope_types
from .graph.pieces import PieceBuilder
from .report import BnDecision, BranchMerge, empty_record
from .rules import PRODUCERS, RULES
from .rules.base import Refuse, Rule, Skipped
from .rules.chain import AFFINE, LOOK_THROUGH, Candidate

# Ops checked against their ONNX schema before any rule reads them.
VALIDATED_OPS = frozenset({"BatchNormalization", "DequantizeLinear", "CastLike", "Transpose", "Shape", "Expand",
                           "ConstantOfShape", "Constant", *LOOK_THROUGH, *PRODUCERS,
                           *(op for rule in RULES for op in rule.candidates)})


def _reader_dims(node: onnx.NodeProto, index: GraphIndex):
    """What a producer reading a tensor says of its dims (its table entry), for the local check's inputs."""
    if node.op_type not in PRODUCERS or node.domain not in DEFAULT_DOMAINS:
        return None
    try:
        return PRODUCERS[node.op_type].input_dims(node, index)
    except (Refuse, NotConstant, IndexError):
        return None


class _Outcome:
    """What the rules said of one BN that none folded, to give the most specific reason first."""

    def __init__(self):
        self.refusals: List[str] = []  # of rules whose pattern matched, in RULES order
        self.hints: List[str] = []  # what opt-in rules would do
        self.skipped_opt_in: List[str] = []

    def reason(self, candidate: Candidate) -> str:
        hints = "; ".join(self.hints)
        if self.refusals:
            return self.refusals[0] + (f"; {hints}" if hints else "")
        below = candidate.boundary_below
        reason = f"input {candidate.walk.stop}" + (f"; its output goes to {below}" if below else "") + \
            "; nothing to fold it into" + (f" ({hints})" if hints else "")
        return reason + "".join(f", and rule {name!r} is skipped" for name in self.skipped_opt_in)


class Engine:
    """Folds one model in place and records a decision for every BN and decomposed-BN candidate."""

    def __init__(self, model: onnx.ModelProto, options, excluded: Optional[Dict[tuple, str]] = None,
                 model_bytes: Optional[int] = None):
        self.model = model
        self.options = options
        self.excluded = excluded or {}  # (scope path, output) -> why that fold is not made (it failed its check)
        self.checker = LocalChecker(model) if options.local_check else None
        if model_bytes is None:
            from .tensors import tensor_bytes

            model_bytes = tensor_bytes(model)
        self.scope = ModelScope(model, model_bytes=model_bytes, fold_input_initializers=options.fold_input_initializers)
        self.types = scope_types(model, self_describing=tuple(op for op, entry in PRODUCERS.items()
                                                              if entry.self_describing),
                                 typed_ops=(*(op for op, entry in PRODUCERS.items() if not entry.self_describing),
                                            *AFFINE))
        self.skipped = set(options.skip)
        self.allowed = tuple(op for op, entry in PRODUCERS.items() if entry.skip_name not in self.skipped)
        self.rules: Dict[str, List[Rule]] = {}
        for rule in RULES:
            for op in rule.candidates:
                self.rules.setdefault(op, []).append(rule)
        self.decisions: List[BnDecision] = []
        self.decomposed: List[BnDecision] = []
        self.merges: List[BranchMerge] = []  # (a rule's `report` names one of these three lists)
        self.rule: Optional[Rule] = None  # the rule at work and the record it fills: what an internal error names
        self.record = None

    def run(self) -> None:
        self.fold_graph(self.model.graph, None, "main", key=())
        for function in self.model.functions:
            self.fold_function(function)
        if self.checker is not None:
            self.checker.flush()

    @property
    def local_failures(self) -> Dict[tuple, str]:
        return self.checker.failures if self.checker is not None else {}

    @property
    def local_summary(self) -> Optional[dict]:
        return self.checker.summary() if self.checker is not None else None

    def fold_function(self, function: onnx.FunctionProto) -> None:
        """Fold inside a model-local function body, which every call site shares: only BNs whose weights and
        parameters are constants of the body fold (--inline-functions folds the others per call site)."""
        body = helper.make_graph(list(function.node), function.name,
                                 [helper.make_value_info(name, onnx.TypeProto()) for name in function.input],
                                 [helper.make_value_info(name, onnx.TypeProto()) for name in function.output])
        self.fold_graph(body, None, f"function {function.domain}.{function.name}", key=None,
                        function_types=function_types(function))
        del function.node[:]
        function.node.extend(body.node)

    def fold_graph(self, graph: onnx.GraphProto, parent: Optional[GraphIndex], path: str, key,
                   function_types=None) -> None:
        types = function_types if key is None else self.types.get(key)
        index = GraphIndex(graph, model=self.scope, path=path, parent=parent, types=types,
                           function=key is None, validated_ops=VALIDATED_OPS)
        for position, node in enumerate(index.nodes):
            if not index.is_removed(node) and node.domain in DEFAULT_DOMAINS and node.op_type in self.rules:
                self.offer(node, index)
            for attr in node.attribute:
                bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
                for number, body in enumerate(bodies):
                    suffix = f"[{number}]" if len(bodies) > 1 else ""
                    self.fold_graph(body, index, f"{path}/{node_label(node)}.{attr.name}{suffix}",
                                    key=None if key is None else key + (position, attr.name, number),
                                    function_types=function_types)
        index.editor.finish()

    def offer(self, node: onnx.NodeProto, index: GraphIndex) -> None:
        """Offer `node` to the rules that take its op type, in order, until one folds it."""
        rules = self.rules[node.op_type]
        candidate = Candidate(node, index, self.allowed)
        decision = None
        if any(rule.report == "decisions" for rule in rules):
            decision = BnDecision(node=node.name, output=node.output[0] if node.output else "", graph=index.path,
                                  folded=False)
            self.decisions.append(decision)
        self.record, self.rule = decision, rules[0]
        try:
            if decision is not None:
                if (index.path, decision.output) in self.excluded:
                    decision.reason = self.excluded[(index.path, decision.output)]
                    return
                try:
                    candidate.bn
                except Refuse as why:  # no BN a rule may fold (training mode, parameters that are no constants)
                    decision.reason = str(why)
                    return
            outcome = _Outcome()
            for rule in rules:
                self.rule = rule
                if self._offer(rule, candidate, decision, outcome):
                    return
            if decision is not None:
                decision.reason = outcome.reason(candidate)
        except Exception as error:  # noqa: BLE001 - one fold never sinks the run
            record = self.record
            if record is None:  # the rule raised before it made its record
                record = empty_record(self.rule.report, node_label(node), node.output[0] if node.output else "",
                                      index.path)
                getattr(self, self.rule.report).append(record)
            record.reason = f"internal error in {self.rule.name}: {type(error).__name__}: {error} (please report)"
            record.internal_error = True
            if isinstance(record, BranchMerge):
                record.merged = False
            else:
                record.folded = False

    def _offer(self, rule: Rule, candidate: Candidate, decision: Optional[BnDecision], outcome: _Outcome) -> bool:
        """Offer the candidate to one rule; whether it folded it. `decision` is the BN's (None when the rule makes
        its own record for each match)."""
        try:
            match = rule.match(candidate)
        except Skipped as why:
            outcome.refusals.append(str(why))
            return False
        except (Refuse, NotConstant) as why:
            outcome.refusals.append(f"{why} [{rule.name}]")
            return False
        if match is None:
            return False
        if rule.name in self.skipped:
            if rule.opt_in:
                outcome.skipped_opt_in.append(rule.name)
            else:
                outcome.refusals.append(f"{rule.describe(match)}, but rule {rule.name!r} is skipped")
            return False
        record = decision
        if record is None:
            record = rule.record(candidate, match)
            getattr(self, rule.report).append(record)
            self.record = record
        key = (candidate.index.path, record.output)
        if key in self.excluded:
            record.reason = self.excluded[key]
            return False
        try:
            edit = rule.plan(match, candidate)
        except (Refuse, NotConstant) as why:
            reason = str(why) if isinstance(why, Skipped) else f"{why} [{rule.name}]"
            if decision is None:
                record.reason = reason
            else:
                outcome.refusals.append(reason)
            return False
        if rule.opt_in and not getattr(self.options, rule.name, False):
            decision.standalone_possible = True
            outcome.hints.append(rule.hint)
            return False
        self._apply(record, rule, match, edit, candidate.index)
        return True

    def _apply(self, record, rule: Rule, match, edit: Edit, index: GraphIndex) -> None:
        builder = PieceBuilder(record.label, edit, index, edit.output_axes, reader_dims=_reader_dims) \
            if self.checker is not None else None
        # What keeps its name but not its values: the chain's kept views, and what a fold rewrote in place.
        changed = (*edit.through, *(edit.into if rule.rewrites_into else ()))
        rewritten = [name for node in changed for name in node.output if name and name != record.output]
        piece = index.editor.apply(edit, then=builder.after if builder is not None else None)
        if isinstance(record, BnDecision):
            record.rewritten = rewritten
        if piece is not None:
            self.checker.add(piece, record, (index.path, record.output))
        rule.applied(record, match, edit, self.decisions)
