"""``flan lift``: a table -> LoRA-tuned LM beside scikit-learn baselines, one report."""

from __future__ import annotations

import argparse
from pathlib import Path

from flan_builder.cli_args import batch_size, comma_list, int_list, non_negative_float, positive_int

EPILOG = """examples:
  flan lift --dataset iris --out reports/lift-iris            # train + evaluate + baselines
  flan lift --csv my.csv --target price --kind regression --names shuffled --out reports/price
  flan lift --dataset wine --names names,generic,shuffled --out reports/wine-names   # the ablation
  flan lift --dataset iris --templates 10 --out reports/iris-10     # all ten phrasings, FLAN-style
  flan lift --dataset iris --seeds 0 --set sft.num_train_epochs=1 --out /tmp/quick
Bundled tables (scikit-learn, offline): iris, wine, breast_cancer, digits (classification),
diabetes (regression). A run resumes where it stopped when started again with the same --out.
  flan lift --dataset wine --seeds 0,1,2 --extend --out reports/lift-wine   # add seeds 1, 2 to a report
  flan lift --dataset iris --proxy-base BIGGER-MODEL --alpha 1.0 --out reports/iris-proxy   # proxy-tuning
LIFT's other experiments (modes of the same run and report):
  flan lift --function linear --seeds 0 --out reports/fn-linear        # LIFT's synthetic families
  flan lift --function quadratic --dim 2 --noise 0.1 --x-range=-10,10 --out reports/fn-quad2d
  flan lift --function 'sin(x1) + 0.5 * x2' --function-rows 200,100 --out reports/fn-mine
  flan lift --dataset iris --train-sizes 10,20,50,120 --out reports/iris-sizes    # sample-size curves
  flan lift --dataset iris --init random --out reports/iris-init     # pretrained vs random init
  flan lift --dataset iris --in-context 8 --out reports/iris-icl     # k demonstrations, no tuning
  flan lift --dataset iris --model smollm2-135m,gemma3-270m --init random --out reports/iris-2   # two models
"""


def float_pair(value: str) -> tuple[float, float]:
    """'LOW,HIGH' -> (low, high)."""
    parts = comma_list(value)
    try:
        low, high = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not LOW,HIGH (two numbers)") from None
    return low, high


def int_pair(value: str) -> tuple[int, int]:
    """'TRAIN,TEST' -> (train, test)."""
    numbers = int_list(value)
    if len(numbers) != 2:
        raise argparse.ArgumentTypeError(f"{value!r} is not TRAIN,TEST (two whole numbers)")
    return numbers[0], numbers[1]


def cmd_lift(args: argparse.Namespace) -> int:
    from flan_builder.lift.experiment import LiftConfig, run_lift
    from flan_builder.lift.report import table
    from flan_builder.progress import quiet_library_logs
    from flan_builder.resources import resolve

    if args.old_task:
        from flan_builder.errors import FlanError

        raise FlanError(f"--task was renamed --kind (classification or regression): "
                        f"use --kind {args.old_task}")
    quiet_library_logs()
    results = run_lift(LiftConfig(
        out=Path(args.out), dataset=args.dataset, csv=Path(args.csv) if args.csv else None,
        target=args.target, kind=args.kind, model=args.model[0], other_models=args.model[1:],
        names=args.names, seeds=args.seeds,
        recipe=resolve(args.recipe, "train"), overrides=list(args.set or []), templates=args.templates,
        with_options=not args.no_options, base=not args.no_base, batch_size=args.batch_size,
        digits=args.digits, overwrite=args.overwrite, extend=args.extend, proxy_base=args.proxy_base,
        alpha=args.alpha, proxy_level=args.proxy_level, function=args.function, dim=args.dim,
        noise=args.noise, x_range=args.x_range, function_rows=args.function_rows, data_seed=args.data_seed,
        train_sizes=args.train_sizes, random_init=args.init == "random", in_context=args.in_context,
    ))
    print(table(results))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``flan lift`` to the top-level parser."""
    from flan_builder.resources import LIFT_RECIPE_NAME

    parser = sub.add_parser("lift", help="tabular classification / regression as language (LIFT)",
                            epilog=EPILOG)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="a bundled table: iris, wine, breast_cancer, digits, diabetes")
    source.add_argument("--csv", help="a CSV or parquet file with a header row")
    source.add_argument("--function", metavar="NAME|EXPR",
                        help="a synthetic regression table: a LIFT family (linear, quadratic, exponential, "
                             "cosine, l1norm, piecewise) or an expression of x1 (and x2), e.g. "
                             "'sin(x1) + x2 ** 2'")
    parser.add_argument("--target", help="the column to predict (with --csv)")
    parser.add_argument("--kind", choices=("classification", "regression"),
                        help="with --csv (default: regression for a numeric column with >20 values)")
    parser.add_argument("--task", dest="old_task", help=argparse.SUPPRESS)  # renamed: --kind
    parser.add_argument("--out", required=True, help="report directory (written atomically at the end)")
    parser.add_argument("--model", type=comma_list, default=["smollm2-135m"], metavar="MODEL[,MODEL...]",
                        help="alias, .gguf file, model dir or Hub id; a comma list trains and scores each "
                             "the same way, side by side in one report (with --extend: adds a model)")
    parser.add_argument("--names", type=comma_list, default=["names"], metavar="MODES",
                        help="feature names: names, generic (x1, x2, ...), shuffled; a comma list runs "
                             "the ablation in one table")
    parser.add_argument("--seeds", type=int_list, default=[0, 1, 2], help="split and training seeds (0,1,2)")
    parser.add_argument("--recipe", default=LIFT_RECIPE_NAME,
                        help="training recipe: a shipped name or a file (default: lift, train/lift.yaml)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a recipe field, e.g. sft.num_train_epochs=5 (repeatable)")
    parser.add_argument("--templates", type=int, default=1, metavar="K",
                        help="train and evaluate with the first K serialisations (default 1, LIFT's "
                             "protocol; 10: every phrasing, one drawn per training row)")
    parser.add_argument("--no-options", action="store_true", help="leave out the OPTIONS suffix")
    parser.add_argument("--no-base", action="store_true", help="skip the untuned model's zero-shot rows")
    parser.add_argument("--batch-size", type=batch_size, default="auto", help="'auto' or rows per batch")
    parser.add_argument("--digits", type=int, default=4, help="significant digits of numbers in text")
    function = parser.add_argument_group("synthetic functions (with --function; defaults: LIFT's)")
    function.add_argument("--dim", type=int, choices=(1, 2),
                          help="input dimension (default 1; an expression using x2: 2)")
    function.add_argument("--noise", type=non_negative_float,
                          help="training-target noise, as a fraction of the std of y (default 0.1)")
    function.add_argument("--x-range", type=float_pair, metavar="LOW,HIGH",
                          help="input range of every coordinate (default -10,10; write --x-range=-10,10)")
    function.add_argument("--function-rows", type=int_pair, metavar="TRAIN,TEST",
                          help="rows per seed's split (default 200,100)")
    function.add_argument("--data-seed", type=int, default=0, help="seed of the drawn inputs and noise")
    experiments = parser.add_argument_group("LIFT's other experiments")
    experiments.add_argument("--train-sizes", type=int_list, metavar="N,N,...",
                             help="train LIFT and fit the baselines on nested subsets of each training "
                                  "split of these sizes (one test split); the report plots score vs size")
    experiments.add_argument("--init", choices=("pretrained", "random"), default="pretrained",
                             help="random: also train the same architecture from random weights with the "
                                  "same recipe, beside the pretrained run")
    experiments.add_argument("--in-context", type=positive_int, metavar="K",
                             help="also score the untuned model with K training rows as demonstrations "
                                  "in each prompt (no tuning)")
    proxy = parser.add_argument_group("proxy-tuning: each seed's LoRA run steers a larger untuned model")
    proxy.add_argument("--proxy-base", metavar="MODEL",
                       help="also score MODEL untuned and MODEL + alpha x (LoRA run - --model) on the "
                            "test rows")
    proxy.add_argument("--alpha", type=non_negative_float, default=1.0, help="default 1.0 (the paper)")
    proxy.add_argument("--proxy-level", choices=("token", "sequence"), default="token",
                       help="token: shared tokenizer (the paper); sequence: any tokenizer, "
                            "classification only")
    replace = parser.add_mutually_exclusive_group()
    replace.add_argument("--overwrite", action="store_true", help="replace an existing report directory")
    replace.add_argument("--extend", action="store_true",
                         help="add seeds or name modes to the finished report at --out, keeping its "
                              "runs (same settings only)")
    parser.set_defaults(func=cmd_lift)
