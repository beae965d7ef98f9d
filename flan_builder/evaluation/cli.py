"""``flan eval``: zero-shot evaluation of one or more models on a built held-out split."""

from __future__ import annotations

import argparse
from pathlib import Path

from flan_builder.cli_args import batch_size, non_negative_float

EPILOG = """examples:
  flan eval heldout-nli                                     # a shipped suite by name (`flan recipes`)
  flan eval eval/heldout-nli.yaml                           # a suite: models, data, rows, templates
  flan eval eval/heldout-nli.yaml --limit 20 --out reports/nli-quick   # flags override the suite
  flan eval --model smollm2-135m --model runs/heldout-nli --data build/heldout-nli --out reports/nli
  flan eval ... --no-options                 # the OPTIONS ablation on the same rows
  flan eval ... --options both               # with and without OPTIONS in one report
  flan eval ... --limit 50 --templates 3     # 50 rows per dataset, first 3 templates
  flan eval ... --separator " " --log-samples   # lm-eval's protocol; every row's scores in samples/
  flan eval ... --shots 2                    # 2 exemplars per prompt from each task's train split
  flan eval ... --shots 4 --shots-from mixture   # 4 exemplars from the build's training mixture
  flan eval ... --cot zero-shot              # "Let's think step by step.", then the answer (cot / math tasks)
  flan eval --model BASE --expert runs/heldout-nli --anti smollm2-135m --alpha 1.0 \\
      --direct runs/base-tuned --data build/heldout-nli --out reports/proxy   # proxy-tuning
The first --model is the base that the others are compared with. With --expert and --anti the
report adds the proxy-tuned base and the expert alone (and % gap closed with --direct).
"""


def separator(value: str) -> str:
    """A --separator value with backslash escapes read (``'\\n\\n'`` is two newlines)."""
    from flan_builder.errors import FlanError

    try:
        return value.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as exc:
        raise FlanError(f"--separator '{value}': bad backslash escape ({exc.reason}); write e.g. "
                        "'\\n\\n' or ' '") from None


def config_from_args(args: argparse.Namespace):  # -> EvalConfig
    """The suite (if any) with every given flag laid over it."""
    from flan_builder.errors import FlanError
    from flan_builder.evaluation.suite import OPTIONS, EvalConfig, load_suite
    from flan_builder.lm.load import proxy_from_flags
    from flan_builder.resources import resolve

    settings = load_suite(resolve(args.suite, "eval")) if args.suite else {}
    if args.model:
        settings["models"] = list(args.model)
    for flag, key in (("limit", "limit"), ("templates", "templates"), ("template", "template_filter"),
                      ("task", "tasks"), ("batch_size", "batch_size"), ("shots", "shots"),
                      ("shots_from", "shots_from"), ("direct", "direct"), ("cot", "cot")):
        if getattr(args, flag) is not None:
            settings[key] = getattr(args, flag)
    if args.data:
        settings["data"] = Path(args.data)
    if args.out:
        settings["out"] = Path(args.out)
    if args.no_options or args.options:
        settings["options"] = OPTIONS["without" if args.no_options else args.options]
    if args.metric_from_hub:
        settings["metric_from_hub"] = True
    if args.separator is not None:
        settings["separator"] = separator(args.separator)
    if args.log_samples:
        settings["log_samples"] = True
    for key, flag in (("models", "--model"), ("data", "--data"), ("out", "--out")):
        if not settings.get(key):
            raise FlanError(f"{flag} is required (or a suite file that sets {key}:)")
    models = settings["models"]
    direct = settings.get("direct")
    if direct and direct not in models:  # report order: base, directly tuned, proxy-tuned, expert alone
        models.append(direct)
    if (args.expert is not None or args.anti is not None) and not isinstance(models[0], str):
        raise FlanError("--expert / --anti steer the first --model, which must be a plain model")
    proxy = proxy_from_flags(models[0], args.expert, args.anti, args.alpha, args.proxy_level)
    if proxy is not None:
        models += [proxy, *([] if args.expert in models else [args.expert])]
    return EvalConfig(**settings, overwrite=args.overwrite)


def cmd_eval(args: argparse.Namespace) -> int:
    from flan_builder.evaluation.evaluator import evaluate_models
    from flan_builder.evaluation.report import gap_table, table
    from flan_builder.progress import quiet_library_logs

    config = config_from_args(args)
    quiet_library_logs()
    results = evaluate_models(config)
    print(table(results))
    if results.get("gap_closed"):
        print("\n" + gap_table(results))
    print(f"\n{results['wall_time_s']} s -> {config.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``flan eval`` to the top-level parser."""
    parser = sub.add_parser("eval", help="zero-shot evaluation on the held-out cluster, base vs tuned",
                            epilog=EPILOG)
    parser.add_argument("suite", nargs="?",
                        help="a shipped suite's name (`flan recipes`) or a suite file; flags override it")
    parser.add_argument("--model", action="append",
                        help="alias, .gguf, model dir, Hub id, or a `flan train` run (repeatable)")
    parser.add_argument("--data", help="a built dataset with a heldout split")
    parser.add_argument("--out", help="report directory (written atomically)")
    parser.add_argument("--limit", type=int,
                        help="rows per dataset: a seeded sample of the build's held-out rows, the same "
                             "for every template and model (default: all)")
    parser.add_argument("--templates", type=int, help="first K templates per dataset")
    parser.add_argument("--template", action="append", help="only template ids containing this")
    parser.add_argument("--task", action="append", help="only this task (repeatable)")
    parser.add_argument("--options", choices=("with", "without", "both"), default=None,
                        help="OPTIONS suffix (default: with)")
    parser.add_argument("--no-options", action="store_true", help="same as --options without")
    parser.add_argument("--shots", type=int, help="exemplars per prompt from each held-out task's own train "
                                                  "split (default 0: zero-shot, FLAN's protocol)")
    parser.add_argument("--shots-from", choices=("task", "mixture"), default=None,
                        help="where --shots exemplars come from: task (default; the held-out task's own "
                             "train split) or mixture (the built dataset's training rows: in-context "
                             "learning on the data the tuned models saw)")
    parser.add_argument("--cot", choices=("none", "zero-shot"), default=None,
                        help="zero-shot: chain of thought on tasks scored by answer extraction (cot, math): "
                             "'Let's think step by step.', the reasoning, then 'Therefore, the answer is' "
                             "and the answer (Kojima et al. 2022); default none: the prompt as built")
    parser.add_argument("--batch-size", type=batch_size, default=None, help="'auto' (default) or rows")
    parser.add_argument("--metric-from-hub", action="store_true",
                        help="use the Hub's evaluate metrics instead of the shipped local ones")
    parser.add_argument("--separator", default=None,
                        help="text between prompt and option, part of the context (default: the build's, "
                             "'\\n\\n'; ' ' is lm-evaluation-harness's); backslash escapes are read")
    parser.add_argument("--log-samples", action="store_true",
                        help="write every row's prompt, option scores and predictions to samples/")
    proxy = parser.add_argument_group("proxy-tuning (steer the first --model at decoding time)")
    proxy.add_argument("--expert", help="the tuned small model (e.g. a `flan train` run)")
    proxy.add_argument("--anti", help="the expert before tuning (the anti-expert)")
    proxy.add_argument("--alpha", type=non_negative_float, default=None,
                       help="strength: base + alpha x (expert - anti); default 1.0 (the paper)")
    proxy.add_argument("--proxy-level", choices=("token", "sequence"), default="token",
                       help="token: the paper (one shared tokenizer); sequence: option scores combined, "
                            "each model in its own tokenization (scoring only)")
    proxy.add_argument("--direct", help="the base tuned directly, for %% gap closed (added as a model)")
    parser.add_argument("--overwrite", action="store_true")
    parser.set_defaults(func=cmd_eval)

