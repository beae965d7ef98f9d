"""The ``flan`` command: one entry point, one subcommand per job.

Bad input raises FlanError anywhere below; ``main`` turns it into one line on stderr
and exit code 2, never a traceback. So are the failures of the world below: a file that
cannot be read or written (OSError), text that is not UTF-8, and a missing [train] / [eval]
extra. Any other exception is a programming error and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from flan_builder import __version__
from flan_builder.cli_args import comma_list, positive_int
from flan_builder.errors import FlanError
from flan_builder.mixing import DEFAULT_MAX_PER_DATASET, DEFAULT_RATE_CAP

EPILOG_BUILD = """examples:
  flan build --heldout nli --data-dir ../shared/data --out build/heldout-nli
  flan build --heldout none --data-dir ../shared/data --out build/mix --total 20000 --seed 1
  flan build --heldout nli --data-dir ../shared/data --out build/nli-tab --with tabular   # + LIFT tables
  flan build --heldout nli --data-dir ../shared/data --out build/nli-msgs --as messages --format parquet
  flan build --heldout nli --out build/nli-flan2 --formats zs_opt,zs_noopt,fs_opt,fs_noopt   # FLAN v2 mix
  flan build --heldout nli --out build/nli-raw --prompt-style no_template   # FLAN's no-template ablation
  flan build --heldout nli --out build/nli --push-to-hub USER/flan-nli   # HF_TOKEN from the environment
"""


class _Parser(argparse.ArgumentParser):
    """argparse with examples in ``--help`` and bad arguments as one line with exit code 2."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--templates-dir", type=Path, action="append", default=None, metavar="DIR",
                        help="a folder of your own task specs (<cluster>/<task>.yaml), searched before "
                             "the shipped templates ($FLAN_TEMPLATES_DIR, else templates/): adds tasks, "
                             "or replaces a shipped task of the same name (repeatable)")
    parser.add_argument("--no-shipped-templates", action="store_true",
                        help="use only the --templates-dir folders, not the shipped templates")


def template_roots(args: argparse.Namespace) -> list[Path] | None:
    """The task-spec search path: the user's folders first, the shipped templates last."""
    from flan_builder.specs import default_templates_dir

    mine = list(args.templates_dir or [])
    if args.no_shipped_templates:
        if not mine:
            raise FlanError("--no-shipped-templates needs at least one --templates-dir")
        return mine
    return [*mine, default_templates_dir()] if mine else None


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None,
                        help="local mirror DIR/<dataset>/<split>.jsonl (default: $FLAN_DATA_DIR; "
                             "unset: load from the Hugging Face Hub)")


# -- flan tasks --------------------------------------------------------------------------------

def cmd_tasks(args: argparse.Namespace) -> int:
    from flan_builder.sources import available_roles, resolve_data_dir
    from flan_builder.specs import load_registry

    registry = load_registry(template_roots(args))
    data_dir = resolve_data_dir(args.data_dir)
    specs = list(registry.tasks.values())
    if args.cluster:
        registry.check_cluster(args.cluster)
        specs = registry.in_cluster(args.cluster)
    header = ("task", "cluster", "type", "templates", "inverted", "splits")
    rows = []
    for spec in specs:
        roles = available_roles(spec, data_dir)
        splits = " ".join(
            f"{role}={spec.source.splits[role]}" + ("" if ok else "(missing)")
            # eval rows carved out of the train split (sources.eval_slice_indices)
            + (f"[{spec.source.eval_slice['rows']} held out]" if spec.source.eval_slice and role == "eval"
               else "")
            for role, ok in roles.items()
        )
        rows.append((spec.name, spec.cluster, spec.type, str(len(spec.templates)),
                     str(sum(t.inverted for t in spec.templates)), splits))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    clusters = sorted({s.cluster for s in specs})
    print(f"\n{len(specs)} tasks in {len(clusters)} clusters, "
          f"{sum(len(s.templates) for s in specs)} templates")
    return 0


# -- flan templates ----------------------------------------------------------------------------

def cmd_templates_show(args: argparse.Namespace) -> int:
    from flan_builder.sources import load_split, resolve_data_dir
    from flan_builder.specs import load_registry
    from flan_builder.templating import TaskRenderer

    registry = load_registry(template_roots(args))
    spec = registry.task(args.task)
    data_dir = resolve_data_dir(args.data_dir)
    role = args.split or ("train" if "train" in spec.source.splits else "eval")
    rows = load_split(spec, role, data_dir)
    if not 0 <= args.row < len(rows):
        raise FlanError(f"--row {args.row} is out of range: {rows.split} has {len(rows)} rows")
    row = rows.take([args.row])[0]
    templates = [spec.template(args.template)] if args.template else list(spec.templates)
    with_opts = TaskRenderer(spec, with_options=True)
    without = TaskRenderer(spec, with_options=False)
    print(f"# {spec.name} ({spec.cluster}, {spec.type}) — {rows.split} row {args.row}, "
          f"{len(templates)} of {len(spec.templates)} templates")
    for template in templates:
        index = spec.templates.index(template)
        example = with_opts.render(row, index, split=rows.split, row_index=args.row)
        print(f"\n=== {template.id}{' (inverted)' if template.inverted else ''} ===")
        print(f"--- prompt{' with OPTIONS' if example.options else ''} ---")
        print(example.prompt)
        if example.options:
            bare = without.render(row, index, split=rows.split, row_index=args.row)
            print("--- prompt without OPTIONS ---")
            print(bare.prompt)
        print("--- completion ---")
        print(example.target)
    return 0


def cmd_templates_lint(args: argparse.Namespace) -> int:
    from flan_builder.lint import lint_rows, lint_static
    from flan_builder.progress import progress
    from flan_builder.sources import resolve_data_dir
    from flan_builder.specs import load_registry

    registry = load_registry(template_roots(args))
    data_dir = resolve_data_dir(args.data_dir)
    specs = [registry.task(t) for t in args.task] if args.task else list(registry.tasks.values())
    issues = []
    checked = 0
    with progress(specs, desc="linting", unit="task") as bar:
        for spec in bar:
            issues += lint_static(spec, args.min_templates, args.min_inverted)
            if not args.no_data:
                issues += lint_rows(spec, data_dir, args.rows)
            checked += len(spec.templates)
    for issue in issues:
        print(f"lint: {issue}")
    rows = "no rows" if args.no_data else f"up to {args.rows} rows per split"
    print(f"{checked} templates in {len(specs)} tasks checked on {rows}: "
          f"{len(issues)} problem{'s' if len(issues) != 1 else ''}")
    return 1 if issues else 0


def cmd_templates_import_promptsource(args: argparse.Namespace) -> int:
    import tempfile

    from flan_builder import promptsource
    from flan_builder.sources import resolve_data_dir
    from flan_builder.specs import load_registry

    registry = load_registry(template_roots(args))
    data_dir = resolve_data_dir(args.data_dir)
    if args.survey:
        if args.path or args.task or args.out:
            raise FlanError("--survey DIR takes no PATH, --task or --out")
        with tempfile.TemporaryDirectory(prefix="flan-promptsource-") as scratch:
            report = promptsource.survey(args.survey, registry, data_dir, Path(scratch), args.check_rows)
        print("\n".join(report.lines()))
        return 0
    if not args.path or not args.task:
        raise FlanError("give a promptsource templates.yaml and --task NAME (or --survey DIR)")

    def warn(message: str) -> None:
        print(f"flan templates import-promptsource: warning: {message}", file=sys.stderr)

    result, target = promptsource.run_import(
        Path(args.path), args.task, registry=registry, cluster=args.cluster, out=args.out,
        overwrite=args.overwrite, strict=args.strict, data_dir=data_dir, check_rows=args.check_rows,
        warn=warn)
    if target is None:
        sys.stdout.write(result.spec_text or "")
    print(promptsource.summary(result, Path(args.path), target), file=sys.stderr)
    return 0


# -- flan build --------------------------------------------------------------------------------

def cmd_build(args: argparse.Namespace) -> int:
    from flan_builder.build import BuildConfig, build
    from flan_builder.fewshot import FewShotSettings
    from flan_builder.fewshot import summary_line as formats_line
    from flan_builder.mixing import MixingConfig
    from flan_builder.sources import resolve_data_dir

    config = BuildConfig(
        heldout=args.heldout,
        out=Path(args.out),
        data_dir=resolve_data_dir(args.data_dir),
        seed=args.seed,
        mixing=MixingConfig(
            max_per_dataset=args.max_per_dataset,
            rate_cap=args.rate_cap,
            total=args.total,
            all_templates=args.all_templates,
            max_templates=args.max_templates,
        ),
        with_options=not args.no_options,
        style="messages" if args.as_ == "messages" else "prompt_completion",
        export_formats=tuple(args.format or ()),
        tasks=args.tasks,
        train_clusters=args.train_clusters,
        num_train_clusters=args.num_train_clusters,
        with_clusters=args.with_clusters,
        max_eval_rows=args.max_eval_rows,
        num_proc=args.num_proc,
        eval_only=args.eval_only,
        overwrite=args.overwrite,
        templates_dir=template_roots(args),
        contamination=args.contamination,
        prompt_style=args.prompt_style,
        fewshot=FewShotSettings(formats=tuple(args.formats) if args.formats else None, shots=args.shots,
                                variant=args.fewshot_variant, budget=args.fewshot_budget,
                                tokenizer=args.fewshot_tokenizer),
    )
    result = build(config)
    manifest = result.manifest
    for split, counts in manifest["counts"].items():
        clusters = ", ".join(f"{c} {n:,}" for c, n in counts["per_cluster"].items())
        tasks = len(counts["per_task"])
        print(f"{split}: {counts['total']:,} rows from {tasks} task{'s' if tasks != 1 else ''} "
              f"({clusters})")
    if manifest["split_plan"]["blocked_clusters"]:
        print(f"held out: {manifest['heldout_cluster']}; removed from training: "
              f"{', '.join(manifest['split_plan']['blocked_clusters'])}")
    from flan_builder.contamination import summary_line

    if summary := summary_line(manifest["contamination"]):
        print(summary)
    if formats := formats_line(manifest["formats"]):
        print(formats)
    if manifest["prompt_style"]["style"] != "instructions":
        print(f"prompt style: {manifest['prompt_style']['style']} (training rows only; the held-out "
              "rows keep their instructions)")
    print(f"content hash {manifest['content_hash']['all'][:16]}, {manifest['wall_time_s']} s "
          f"-> {result.out}")
    if args.push_to_hub:
        from flan_builder.publish import push
        from flan_builder.specs import load_registry

        url = push(result.out, args.push_to_hub, public=args.public,
                   registry=load_registry(template_roots(args)))
        print(f"published ({'public' if args.public else 'private'}): {url}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from flan_builder.publish import push
    from flan_builder.specs import load_registry

    url = push(Path(args.dataset), args.repo_id, public=args.public,
               registry=load_registry(template_roots(args)))
    print(f"published ({'public' if args.public else 'private'}): {url}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from flan_builder.resources import shipped, shipped_dir
    from flan_builder.specs import load_registry

    registry = load_registry(template_roots(args))
    items = shipped()
    width = max(len(item.name) for item in items)
    sections = (("train", "training recipes: flan train NAME"),
                ("llm2llm", "LLM2LLM recipes: flan llm2llm NAME"),
                ("compare", "comparisons of tuning methods: flan compare NAME"),
                ("eval", "evaluation suites: flan eval NAME"))
    for number, (kind, title) in enumerate(sections):
        print(("\n" if number else "") + title)
        for item in (i for i in items if i.kind == kind):
            held = item.data.get("heldout")
            siblings = registry.siblings(held) if held in registry.clusters else set()
            print(f"  {item.name.ljust(width)}  {item.purpose(siblings)}")
    print(f"\nFiles in {shipped_dir('train')} and {shipped_dir('eval')}; a path to your own file works "
          "wherever a name does.")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from flan_builder.models import CACHE_ENV, available_models, model_cache

    rows = available_models()
    width = max(len(row.name) for row in rows)
    for row in rows:
        print(f"{row.name.ljust(width)}  {'ok ' if row.ok else '-- '} {row.where}")
        if row.about:
            print(f"{' ' * width}      {row.about}")
    print(f"\nAliases load from a model folder saved on first use in {model_cache()} "
          f"(${CACHE_ENV} moves it).")
    print("\nAlso accepted: a .gguf file, a model directory (config.json), or a Hub id owner/name.")
    return 0


def cmd_export_lm_eval(args: argparse.Namespace) -> int:
    from flan_builder.evaluation.export import export_from_args

    return export_from_args(args, template_roots(args))


# -- parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flan",
        description="FLAN-style instruction datasets, held-out-cluster training, zero-shot evaluation.",
        epilog="examples:\n  flan tasks --data-dir ../shared/data\n"
               "  flan templates show super_glue_rte --data-dir ../shared/data\n"
               "  flan templates lint --data-dir ../shared/data\n" + EPILOG_BUILD.split("\n", 1)[1],
    )
    parser.add_argument("--version", action="version", version=f"flan-builder {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    tasks = sub.add_parser("tasks", help="list every task: cluster, type, templates, splits",
                           epilog="example:\n  flan tasks --data-dir ../shared/data --cluster nli")
    tasks.add_argument("--cluster", help="only this cluster")
    _add_data_dir(tasks)
    _add_common(tasks)
    tasks.set_defaults(func=cmd_tasks)

    templates = sub.add_parser("templates", help="show, lint or import templates")
    tsub = templates.add_subparsers(dest="templates_command", metavar="ACTION", required=True)
    show = tsub.add_parser(
        "show", help="each template rendered on a real row, with and without OPTIONS",
        epilog="example:\n  flan templates show super_glue_rte --data-dir ../shared/data --row 3")
    show.add_argument("task")
    show.add_argument("--template", help="only this template id")
    show.add_argument("--row", type=int, default=0, help="row index in the split (default 0)")
    show.add_argument("--split", choices=("train", "eval"), help="default: train if present")
    _add_data_dir(show)
    _add_common(show)
    show.set_defaults(func=cmd_templates_show)
    lint = tsub.add_parser(
        "lint", help="check every template of every task on real rows (exit 1 on problems)",
        epilog="example:\n  flan templates lint --data-dir ../shared/data --rows 200")
    lint.add_argument("--task", action="append", help="only this task (repeatable)")
    lint.add_argument("--rows", type=positive_int, default=64, help="rows per split (default 64)")
    lint.add_argument("--min-templates", type=int, default=10, help="default 10 (FLAN)")
    lint.add_argument("--min-inverted", type=int, default=2,
                      help="inverted (turned-around) templates required per task (default 2)")
    lint.add_argument("--no-data", action="store_true", help="static checks only, load no rows")
    _add_data_dir(lint)
    _add_common(lint)
    lint.set_defaults(func=cmd_templates_lint)
    imp = tsub.add_parser(
        "import-promptsource", help="turn a promptsource templates.yaml into a task spec",
        epilog="examples:\n"
               "  flan templates import-promptsource ../shared/data/promptsource/templates/super_glue/rte"
               " \\\n      --task super_glue_rte --data-dir ../shared/data --out my_templates/\n"
               "  flan templates import-promptsource --survey ../shared/data/promptsource/templates"
               " --data-dir ../shared/data")
    imp.add_argument("path", nargs="?", help="a promptsource templates.yaml (or its folder)")
    imp.add_argument("--task", help="our task the templates are for: a known task lends its source, "
                     "cluster and licence; a new name needs --cluster")
    imp.add_argument("--cluster", help="the cluster of a new task")
    imp.add_argument("--out", type=Path, help="a .yaml file, or a templates folder (gets "
                     "<cluster>/<task>.yaml); default: stdout")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    imp.add_argument("--strict", action="store_true", help="a template that cannot be converted "
                     "is an error, not a warning")
    imp.add_argument("--survey", type=Path, metavar="DIR", help="convert every templates.yaml under "
                     "DIR and count what converts and why the rest do not; writes nothing")
    imp.add_argument("--check-rows", type=positive_int, default=64,
                     help="render each template on this many rows of each split of the task's "
                          "local mirror (--data-dir), dropping those that fail (default 64)")
    _add_data_dir(imp)
    _add_common(imp)
    imp.set_defaults(func=cmd_templates_import_promptsource)

    bld = sub.add_parser("build", help="render, split and mix an instruction dataset",
                         epilog=EPILOG_BUILD)
    bld.add_argument("--heldout", required=True, metavar="CLUSTER",
                     help="cluster to hold out for zero-shot evaluation, or 'none'")
    bld.add_argument("--out", required=True, help="output directory (written atomically)")
    _add_data_dir(bld)
    bld.add_argument("--seed", type=int, default=0)
    bld.add_argument("--max-per-dataset", type=positive_int, default=DEFAULT_MAX_PER_DATASET,
                     help="distinct training rows per dataset (FLAN: 30,000)")
    bld.add_argument("--rate-cap", type=positive_int, default=DEFAULT_RATE_CAP,
                     help="examples-proportional mixing-rate cap per dataset (FLAN: 3,000)")
    bld.add_argument("--total", type=positive_int, default=None,
                     help="training examples in all, shared out by mixing rate (default: sum of rates)")
    bld.add_argument("--all-templates", action="store_true",
                     help="render every drawn row with every template instead of one drawn at random")
    bld.add_argument("--max-templates", type=positive_int, default=None,
                     help="use only each task's first K templates for training (ablation)")
    bld.add_argument("--no-options", action="store_true", help="leave out the OPTIONS suffix (ablation)")
    bld.add_argument("--prompt-style", choices=("instructions", "no_template", "dataset_name"),
                     default="instructions", help="training rows: the templates' instructions (default), "
                     "the input fields only, or '[task] ' + the input fields (FLAN's ablation; held-out "
                     "rows keep their instructions)")
    bld.add_argument("--as", dest="as_", choices=("prompt-completion", "messages"),
                     default="prompt-completion", help="TRL prompt-completion (default) or conversational")
    bld.add_argument("--format", action="append", choices=("parquet", "jsonl"),
                     help="also export each split as parquet / jsonl under data/ (repeatable)")
    bld.add_argument("--tasks", type=comma_list, default=None, help="train only on these tasks (comma list)")
    bld.add_argument("--eval-only", action="store_true",
                     help="build only the held-out split (of --heldout's tasks, or those in --tasks): "
                          "evaluate a task without training on anything")
    bld.add_argument("--train-clusters", type=comma_list, default=None,
                     help="train only on these clusters (ablation: number of clusters)")
    bld.add_argument("--num-train-clusters", type=positive_int, default=None, metavar="N",
                     help="train only on the first N clusters, most training tasks first (FLAN's "
                          "number-of-clusters ablation; the manifest's split_plan lists them)")
    bld.add_argument("--with", dest="with_clusters", type=comma_list, default=None, metavar="CLUSTERS",
                     help="also train on these opt-in clusters (tabular: LIFT's tables as text)")
    bld.add_argument("--max-eval-rows", type=positive_int, default=None,
                     help="held-out rows per dataset (seeded sample; default all)")
    bld.add_argument("--num-proc", type=positive_int, default=1, help="render tasks in N processes")
    bld.add_argument("--contamination", choices=("drop", "report", "fail"), default="drop",
                     help="held-out rows whose text (13-grams) is in training rows: drop those "
                          "training rows (default), only report them, or fail")
    fs = bld.add_argument_group("formats (FLAN v2): zero-/few-shot, with/without OPTIONS, mixed per row")
    fs.add_argument("--formats", type=comma_list, default=None, metavar="F1,F2",
                    help="draw one of these per training row: zs_opt, zs_noopt, fs_opt, fs_noopt "
                         "(FLAN v2: all four, 25%% each); default: zs_opt (zs_noopt with --no-options)")
    fs.add_argument("--shots", type=int, default=None, metavar="K",
                    help="exemplars drawn per few-shot row (default 5 for mix, 25 for x_shot)")
    fs.add_argument("--fewshot-variant", choices=("mix", "x_shot"), default="mix",
                    help="mix: each exemplar with a random template (FLAN's template_mix_five_shot); "
                         "x_shot: keep only exemplars drawn with the query's template")
    fs.add_argument("--fewshot-budget", type=positive_int, default=1920, metavar="TOKENS",
                    help="exemplars are dropped from the end until the prompt fits (FLAN: 1,920)")
    fs.add_argument("--fewshot-tokenizer", default=None, metavar="MODEL",
                    help="count the budget with this model's tokenizer (alias or path; needs "
                         "transformers); default: characters / 4")
    bld.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    bld.add_argument("--push-to-hub", metavar="USER/NAME", help="publish with a dataset card")
    bld.add_argument("--public", action="store_true", help="publish publicly (default: private)")
    _add_common(bld)
    bld.set_defaults(func=cmd_build)

    psh = sub.add_parser("push", help="publish a built dataset with its card (HF_TOKEN from env)",
                         epilog="example:\n  flan push build/heldout-nli USER/flan-heldout-nli")
    psh.add_argument("dataset")
    psh.add_argument("repo_id", metavar="USER/NAME")
    psh.add_argument("--public", action="store_true")
    _add_common(psh)
    psh.set_defaults(func=cmd_push)

    recipes = sub.add_parser("recipes", help="the shipped training recipes and evaluation suites, by name",
                             epilog="example:\n  flan recipes\n  flan train heldout-nli --check")
    _add_common(recipes)
    recipes.set_defaults(func=cmd_recipes)

    models = sub.add_parser("models", help="the models this machine can load, and where from",
                            epilog="example:\n  flan models")
    models.set_defaults(func=cmd_models)

    from flan_builder.evaluation.export import EPILOG as EXPORT_EPILOG
    from flan_builder.evaluation.export import HELP as EXPORT_HELP
    from flan_builder.evaluation.export import add_arguments as add_export_arguments

    export = sub.add_parser("export", help="write the held-out tasks for another evaluation tool")
    targets = export.add_subparsers(dest="export_target", metavar="TOOL", required=True)
    lm_eval = targets.add_parser("lm-eval", help=EXPORT_HELP, epilog=EXPORT_EPILOG)
    add_export_arguments(lm_eval)
    _add_data_dir(lm_eval)
    _add_common(lm_eval)
    lm_eval.set_defaults(func=cmd_export_lm_eval)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Subcommands that live with their own subsystem (training, evaluation, models, LIFT, LLM2LLM)."""
    from flan_builder.compare.cli import register as register_compare
    from flan_builder.evaluation.cli import register as register_eval
    from flan_builder.lift.cli import register as register_lift
    from flan_builder.llm2llm.cli import register as register_llm2llm
    from flan_builder.lm.cli import register as register_generate
    from flan_builder.training.cli import register as register_train

    return [register_train, register_eval, register_generate, register_lift, register_llm2llm,
            register_compare]


# Packages of the [train] / [eval] extras (import name -> extra; None: whichever the command needs).
_EXTRA_MODULES: dict[str, str | None] = {
    "trl": "train", "accelerate": "train", "tensorboard": "train",
    "evaluate": "eval", "rouge_score": "eval", "sacrebleu": "eval", "sklearn": "eval",
    "openai": "eval", "matplotlib": "eval",
    "torch": None, "transformers": None, "peft": None, "gguf": None,
}
_TRAINING_COMMANDS = ("train", "llm2llm")


def _missing_extra(exc: ModuleNotFoundError, command: str) -> str | None:
    """The extra that would install the missing module, or None when it is not an extra's."""
    root = (exc.name or "").split(".")[0]
    if root not in _EXTRA_MODULES:
        return None
    return _EXTRA_MODULES[root] or ("train" if command in _TRAINING_COMMANDS else "eval")


def _os_error_message(exc: OSError) -> str:
    """An OS failure (unreadable input, unwritable output) as one line naming the file."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    files = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    where = f"{' -> '.join(files)}: " if files else ""
    return (f"{where}{reason}; check that the path exists, is the kind of file expected and that "
            "you may read (or write) it")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prefix = f"flan {args.command}: error:"
    try:
        return int(args.func(args) or 0)
    except FlanError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"flan {args.command}: interrupted; no complete output was left behind",
              file=sys.stderr)
        return 130
    except ModuleNotFoundError as exc:
        extra = _missing_extra(exc, args.command)
        if extra is None:
            raise  # a missing module of our own is a programming error: keep its traceback
        print(f"{prefix} flan {args.command} needs the [{extra}] extra: pip install "
              f"'flan-builder[{extra}]' (module {exc.name!r} is not installed)", file=sys.stderr)
        return FlanError.exit_code
    except UnicodeDecodeError as exc:  # a reader below that does not name its file
        print(f"{prefix} an input file is not UTF-8 text ({exc.reason} at byte {exc.start}); "
              "save it as UTF-8", file=sys.stderr)
        return FlanError.exit_code
    except OSError as exc:
        print(f"{prefix} {_os_error_message(exc)}", file=sys.stderr)
        return FlanError.exit_code


if __name__ == "__main__":
    sys.exit(main())
