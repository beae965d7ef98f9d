"""``flan compare RECIPE``: the PEFT methods and in-context learning on one held-out job, one table."""

from __future__ import annotations

import argparse
from pathlib import Path

from flan_builder.cli_args import comma_list, int_list, positive_int

EPILOG = """examples:
  flan compare peft-compare                        # the shipped comparison (`flan recipes` lists it)
  flan compare peft-compare --methods lora,ia3,prompt_tuning --max-steps 50 --output runs/cmp-quick
  flan compare heldout-nli --output runs/nli-compare   # any training recipe: every method, paper settings
  flan compare peft-compare --set compare.settings.prompt_tuning.sft.learning_rate=0.03
  flan compare peft-compare --check                # each method's settings, then stop
Each method trains in its own `flan train` process into OUTPUT/runs/<method>; started again, the
comparison skips every finished method and evaluation and resumes a stopped one.
"""


def recipe_path(arg: str) -> Path:
    """A comparison recipe, or any training recipe (its method list: every method), by path or name."""
    from flan_builder.resources import resolve, shipped

    if not Path(arg).is_file():
        for item in shipped():
            if item.name == arg and item.kind == "train":
                return item.path
    return resolve(arg, "compare")


def cmd_compare(args: argparse.Namespace) -> int:
    from flan_builder.compare.methods import hyperparameters, load_comparison

    overrides = list(args.set or [])
    shortcuts = {"model": args.model, "output": args.output, "dataset.path": args.dataset,
                 "sft.max_steps": args.max_steps, "sft.seed": args.seed, "compare.eval.limit": args.limit,
                 "compare.eval.templates": args.templates, "compare.eval.shots_from": args.shots_from}
    overrides += [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    if args.shots is not None:
        overrides.append(f"compare.eval.shots=[{', '.join(map(str, args.shots))}]")
    comparison = load_comparison(recipe_path(args.recipe), overrides, args.methods)
    base = comparison.base
    if base.heldout != "none":
        from flan_builder.specs import load_registry

        load_registry().check_cluster(base.heldout)
    if args.check:
        from flan_builder.training.job import check_recipe

        for method, recipe in comparison.recipes.items():
            check_recipe(recipe)
            shown = ", ".join(f"{k} {v}" for k, v in hyperparameters(recipe).items())
            print(f"{method}: {shown} -> {recipe.output}")
        e = comparison.eval
        print(f"{args.recipe}: ok ({base.model}; held out {base.heldout}; {base.sft['max_steps']} steps "
              "each; "
              f"evaluated on {e['limit'] or 'all'} rows per dataset, {e['templates'] or 'all'} templates; "
              f"in-context k = {', '.join(map(str, e['shots']))} from the {e['shots_from']})")
        return 0
    from flan_builder.compare.report import table
    from flan_builder.compare.run import run_comparison
    from flan_builder.progress import quiet_library_logs

    quiet_library_logs()
    results = run_comparison(comparison)
    print(table(results))
    print(f"\n-> {base.output}/report.md, report.png, results.json")
    if results["failed"]:
        print(f"flan compare: {', '.join(results['failed'])} failed to train; run the same command again to "
              "retry", flush=True)
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``flan compare`` to the top-level parser."""
    parser = sub.add_parser("compare", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                            help="train every PEFT method on one held-out job beside in-context learning; "
                                 "one report")
    parser.add_argument("recipe", help="a shipped comparison (`flan recipes`), a recipe with a compare: "
                                       "section, or any training recipe")
    parser.add_argument("--methods", type=comma_list,
                        help="comma-separated: full, lora, ia3, prompt_tuning, prefix_tuning, p_tuning "
                             "(default: the recipe's compare.methods, else all six)")
    parser.add_argument("--model", help="alias, .gguf file, model directory or Hub id")
    parser.add_argument("--dataset", help="built dataset directory (dataset.path)")
    parser.add_argument("--max-steps", type=positive_int, help="steps per method (sft.max_steps)")
    parser.add_argument("--seed", type=int, help="sft.seed, the same for every method")
    parser.add_argument("--output", help="the comparison's folder (runs/, eval/, report.md)")
    parser.add_argument("--limit", type=positive_int, help="held-out rows per dataset (compare.eval.limit)")
    parser.add_argument("--templates", type=positive_int, help="first K templates per dataset (default: all)")
    parser.add_argument("--shots", type=int_list,
                        help="in-context learning: exemplars per prompt, e.g. 0,1,4")
    parser.add_argument("--shots-from", choices=("mixture", "task"),
                        help="in-context exemplars from the training mixture (default) or each held-out "
                             "task's own train split")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override any recipe field, e.g. sft.per_device_train_batch_size=4 or "
                             "compare.settings.lora.peft.r=8 (repeatable)")
    parser.add_argument("--check", action="store_true", help="validate every method's recipe and stop")
    parser.set_defaults(func=cmd_compare)
