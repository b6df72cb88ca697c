"""The options that shape a fold, shared by `bnfold`, `bnfold check` and `bnfold bench --fold`, so each command folds
a model the same way for the same flags. Each command makes one bnfold.FoldOptions of them before it reads any
model: contradicting flags or an unknown --skip rule are one usage error, not one per model."""

from __future__ import annotations

import click

fold_input_initializers_option = click.option(
    "--fold-input-initializers", is_flag=True,
    help="Treat initializers that are also graph inputs (IR >= 4: overridable defaults) as constants even when few "
         "of them are (the default already does when at least 90% are, as old PyTorch exports list them); those "
         "the fold leaves unread are removed, from the inputs too.")
keep_input_initializers_option = click.option(
    "--keep-input-initializers", is_flag=True,
    help="Keep every initializer that is also a graph input (IR >= 4) as an overridable input, and the BNs that "
         "read one, even in a model whose initializers are nearly all inputs (folded by default).")
inline_functions_option = click.option(
    "--inline-functions", is_flag=True,
    help="Inline model-local functions first, so BNs fed by function inputs fold per call site.")
standalone_option = click.option(
    "--standalone", is_flag=True,
    help="Replace a BN with nothing to fold into (after an input, Concat, pooling, a residual Add) by Mul + Add. Off "
         "by default: ONNX Runtime runs Mul + Add 1.1-1.5x slower than BatchNormalization.")
skip_option = click.option("--skip", "skip_rules", multiple=True, metavar="RULE",
                           help="Do not apply this rule (repeatable).")
