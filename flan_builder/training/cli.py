"""``flan train RECIPE``: the subcommand, its overrides, and its summary line."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from flan_builder.errors import FlanError

if TYPE_CHECKING:
    from flan_builder.training.recipe import Recipe

EPILOG = """examples:
  flan train heldout-nli                  # a shipped recipe by name (`flan recipes` lists them)
  flan train train/heldout-nli.yaml
  flan train train/heldout-nli.yaml --peft prompt_tuning --max-steps 200 --output runs/nli-pt
  flan train train/heldout-nli.yaml --resume              # continue from the last checkpoint
  flan train train/heldout-nli.yaml --set sft.learning_rate=1e-4 --set peft.r=8
  flan train ablation-clusters-nli          # a sweep: one run per point (1, 2, 4, all clusters)
  flan train ablation-clusters-nli --point c2 --check
  accelerate launch -m flan_builder.cli train train/heldout-nli.yaml   # several GPUs, same recipe
"""


def cmd_train(args: argparse.Namespace) -> int:
    from flan_builder.resources import resolve
    from flan_builder.training.sweep import load_runs

    overrides = list(args.set or [])
    if args.peft and "," in args.peft:  # several methods is a comparison, not one run
        raise FlanError(f"--peft {args.peft}: one method per run; to train and compare several on the "
                        f"same job, run `flan compare {args.recipe} --methods {args.peft}`")
    shortcuts = {"model": args.model, "output": args.output, "dataset.path": args.dataset,
                 "peft.method": args.peft, "sft.max_steps": args.max_steps, "sft.seed": args.seed}
    overrides += [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    if args.merge:
        overrides.append("train.merge=true")
    # a sweep recipe (training/sweep.py) is several runs, trained one after the other
    recipes = load_runs(resolve(args.recipe, "train"), overrides, args.point)
    sweep = len(recipes) > 1 or args.point is not None
    if any(r.heldout != "none" for r in recipes):
        from flan_builder.specs import load_registry

        registry = load_registry()
        for recipe in recipes:
            if recipe.heldout != "none":
                registry.check_cluster(recipe.heldout)
    if args.check:
        from flan_builder.training.job import check_recipe, training_precision
        from flan_builder.training.sweep import check_build

        for recipe in recipes:
            source = check_recipe(recipe)
            if recipe.heldout != "none":
                check_build(recipe, registry)
            label = recipe.name if sweep else args.recipe
            print(f"{label}: ok ({recipe.model}: {source.describe()}; held out {recipe.heldout}, "
                  f"{recipe.method}, {recipe.sft['max_steps']} steps, {training_precision(recipe)} "
                  f"-> {recipe.output})")
        return 0
    from flan_builder.progress import quiet_library_logs
    from flan_builder.training.sweep import has_checkpoint, run_complete

    quiet_library_logs()
    for recipe in recipes:
        resume = args.resume
        if sweep:  # point by point: finished ones are skipped, --resume continues the interrupted one
            if run_complete(recipe) and not args.overwrite:
                print(f"{recipe.name}: already trained -> {recipe.output}")
                continue
            resume = resume and has_checkpoint(recipe)
            print(f"{recipe.name}: {'resuming' if resume else 'training'} -> {recipe.output}")
        _train_one(recipe, resume, args.overwrite)
    return 0


def _train_one(recipe: Recipe, resume: bool, overwrite: bool) -> None:
    from flan_builder.training.job import train

    result = train(recipe, resume=resume, overwrite=overwrite)
    m = result.manifest
    if "wall_time_s" in m:
        curve = m["loss_curve"]
        start = f"{curve[0][1]:.3f}" if curve else "-"
        end = f"{m['final_loss']:.3f}" if m["final_loss"] is not None else "-"
        print(f"{m['steps']} steps, loss {start} -> {end}, {m['tokens_seen']:,} tokens, "
              f"{m['tokens_seen'] / m['wall_time_s']:.0f} tokens/s overall, {m['wall_time_s']:.0f} s, "
              f"peak {m['peak_memory_mb']:.0f} MiB -> {result.out}")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``flan train`` to the top-level parser."""
    parser = sub.add_parser("train", help="tune a causal LM on every cluster but the held-out one",
                            epilog=EPILOG)
    parser.add_argument("recipe", help="a shipped recipe's name (`flan recipes`) or a recipe YAML")
    parser.add_argument("--model", help="alias, .gguf file, model directory or Hub id")
    parser.add_argument("--dataset", help="built dataset directory (dataset.path)")
    parser.add_argument("--peft", help="lora, full, prompt_tuning, prefix_tuning, p_tuning, ia3")
    parser.add_argument("--max-steps", type=int, help="sft.max_steps")
    parser.add_argument("--seed", type=int, help="sft.seed")
    parser.add_argument("--output", help="run directory (written atomically when training ends)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override any recipe field, e.g. sft.learning_rate=1e-4 (repeatable)")
    parser.add_argument("--merge", action="store_true", help="also write a merged model (lora, ia3)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    parser.add_argument("--check", action="store_true", help="validate the recipe and stop")
    parser.add_argument("--point", metavar="NAME", help="a sweep recipe: run only this point "
                        "(default: every point in turn, skipping those already trained)")
    parser.set_defaults(func=cmd_train)
