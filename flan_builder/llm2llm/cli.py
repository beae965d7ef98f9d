"""``flan llm2llm``: a recipe -> the LLM2LLM loop and its variants -> one report."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  flan llm2llm train/llm2llm-trec.yaml --out runs/llm2llm-trec          # the whole loop, resumable
  flan llm2llm train/llm2llm-trec.yaml --out runs/llm2llm-trec --resume  # continue after a stop
  flan llm2llm train/llm2llm-trec.yaml --teacher http://127.0.0.1:8000/v1 --teacher-model NAME --out ...
  flan llm2llm train/llm2llm-trec.yaml --show-prompt                    # what the teacher is asked
  flan llm2llm train/llm2llm-sst2.yaml --set seed_size=0.01 --set variants=[llm2llm,nearest] --out ...
The teacher's API key is read from $OPENAI_API_KEY (or teacher.api_key_env); it is never printed
or written.
"""


def cmd_llm2llm(args: argparse.Namespace) -> int:
    from flan_builder.errors import FlanError
    from flan_builder.llm2llm.loop import Llm2llmRun, run_llm2llm, show_prompt
    from flan_builder.llm2llm.recipe import load_llm2llm_recipe
    from flan_builder.llm2llm.report import table
    from flan_builder.progress import quiet_library_logs
    from flan_builder.resources import resolve

    recipe = load_llm2llm_recipe(resolve(args.recipe, "llm2llm"), list(args.set or []))
    if args.teacher:
        recipe.teacher.update(endpoint=args.teacher, model=None)
    if args.teacher_model:
        if not recipe.teacher["endpoint"]:
            recipe.teacher.update(model=args.teacher_model)
        else:
            recipe.teacher.update(endpoint_model=args.teacher_model)
    if args.show_prompt:
        print(show_prompt(recipe), end="")
        return 0
    if not args.out:
        raise FlanError("--out DIR is required (the report folder, written when the loop finishes)")
    quiet_library_logs()
    results = run_llm2llm(Llm2llmRun(recipe, Path(args.out), resume=args.resume, overwrite=args.overwrite))
    print(table(results))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``flan llm2llm`` to the top-level parser."""
    parser = sub.add_parser(
        "llm2llm", help="LLM2LLM: a teacher writes new examples from the student's errors", epilog=EPILOG
    )
    parser.add_argument("recipe", help="a shipped LLM2LLM recipe's name (llm2llm-trec) or a recipe file")
    parser.add_argument("--out", help="report directory (written atomically when the loop finishes)")
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run after its last complete iteration"
    )
    parser.add_argument("--overwrite", action="store_true", help="start over, replacing --out and its work")
    parser.add_argument(
        "--teacher",
        metavar="URL",
        help="an OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1) as the teacher",
    )
    parser.add_argument(
        "--teacher-model",
        metavar="NAME",
        help="the endpoint's model name (default: the first it lists), or a local model",
    )
    parser.add_argument(
        "--show-prompt",
        action="store_true",
        help="print the teacher prompt for the first seed example and exit",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. iterations=5 or student.sft.learning_rate=5e-4",
    )
    parser.set_defaults(func=cmd_llm2llm)
