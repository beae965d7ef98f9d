"""``flan eval``: zero-shot evaluation of one or more models on a built held-out split."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  flan eval --model smollm2-135m --model runs/heldout-nli --data build/heldout-nli --out reports/nli
  flan eval ... --no-options                 # the OPTIONS ablation on the same rows
  flan eval ... --options both               # with and without OPTIONS in one report
  flan eval ... --limit 50 --templates 3     # 50 rows per dataset, first 3 templates
The first --model is the base that the others are compared with.
"""


def _batch_size(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number or 'auto'") from None
    if size < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return size


def cmd_eval(args: argparse.Namespace) -> int:
    from flan_builder.evaluation.report import table
    from flan_builder.evaluation.run import EvalConfig, evaluate_models
    from flan_builder.training.run import quiet_library_logs

    options = {"with": (True,), "without": (False,), "both": (True, False)}[
        "without" if args.no_options else args.options]
    quiet_library_logs()
    results = evaluate_models(EvalConfig(
        models=args.model, data=Path(args.data), out=Path(args.out), limit=args.limit,
        templates=args.templates, template_filter=args.template, options=options,
        batch_size=args.batch_size, metric_from_hub=args.metric_from_hub, overwrite=args.overwrite,
        tasks=args.task,
    ))
    print(table(results))
    print(f"\n{results['wall_time_s']} s -> {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``flan eval`` to the top-level parser."""
    parser = sub.add_parser("eval", help="zero-shot evaluation on the held-out cluster, base vs tuned",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", required=True,
                        help="alias, .gguf, model dir, Hub id, or a `flan train` run (repeatable)")
    parser.add_argument("--data", required=True, help="a built dataset with a heldout split")
    parser.add_argument("--out", required=True, help="report directory (written atomically)")
    parser.add_argument("--limit", type=int, help="rows per dataset (default: all)")
    parser.add_argument("--templates", type=int, help="first K templates per dataset")
    parser.add_argument("--template", action="append", help="only template ids containing this")
    parser.add_argument("--task", action="append", help="only this task (repeatable)")
    parser.add_argument("--options", choices=("with", "without", "both"), default="with")
    parser.add_argument("--no-options", action="store_true", help="same as --options without")
    parser.add_argument("--batch-size", type=_batch_size, default="auto")
    parser.add_argument("--metric-from-hub", action="store_true",
                        help="use the Hub's evaluate metrics instead of the shipped local ones")
    parser.add_argument("--overwrite", action="store_true")
    parser.set_defaults(func=cmd_eval)
