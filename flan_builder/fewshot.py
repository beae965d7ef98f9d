"""Few-shot prompts and mixed prompt formats, as FLAN v2 builds them.

FLAN v2 (the Flan Collection, google-research/FLAN ``flan/v2``) trains its FLAN 2021 and T0
submixes on four formats in equal shares: zero-shot or few-shot, each with or without the
OPTIONS suffix (``zs_opt``, ``zs_noopt``, ``fs_opt``, ``fs_noopt``). ``flan build --formats``
draws one of the chosen formats per rendered row (seeded, per task).

A few-shot prompt is exemplars from the same task's train split followed by the query. Each
template has a pattern (FLAN's ``FewShotPattern``): an exemplar is
``input_prefix + input + delimiter + target_prefix + target``, followed by the example separator;
the query is ``input_prefix + input + delimiter + target_prefix``. Defaults are FLAN's: no
prefixes, the build's separator (``"\\n\\n"``, FLAN's ``x_y_delimiter``) between input and target,
``"\\n\\n\\n"`` between exemplars; a template overrides them with a ``fewshot:`` mapping.

Two ways of choosing exemplars (FLAN's two few-shot mixtures):

- ``mix`` (``template_mix_five_shot``): k exemplars, each rendered with a template of the task
  drawn at random, joined by one separator drawn per task from ``"\\n"``, ``"\\n\\n"``,
  ``"\\n\\n\\n"``.
- ``x_shot`` (``template_0to10_x_shot``): k candidates (FLAN: 25), each with a random template;
  only those that share the query's template are kept (FLAN: 2.5 shots on average from ten
  templates), joined by that template's separator.

Exemplars are then pruned to a token budget (FLAN: 1,920 tokens for the whole prompt): kept
in drawn order while the query and the exemplars so far fit. Tokens are the model's when a
tokenizer is given, else estimated as one per ``CHARS_PER_TOKEN`` characters. A row whose
query alone is over the budget, or whose draw kept no exemplar, stays zero-shot and is counted.

Exemplars come from the task's training pool (after the per-dataset cap and the contamination
check), never the query's own row nor a row with the same content. Draws happen in the main
process (seeded per task); a worker only renders, so ``--num-proc`` gives the same rows.
"""

from __future__ import annotations

import functools
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flan_builder.errors import FlanError
from flan_builder.manifest import row_hash
from flan_builder.mixing import task_rng
from flan_builder.specs import TaskSpec, TemplateSpec
from flan_builder.templating import options_suffix

FORMATS = ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt")
VARIANTS = ("mix", "x_shot")
DEFAULT_SHOTS = {"mix": 5, "x_shot": 25}  # FLAN's five-shot mix and its 25 x_shot candidates
DEFAULT_BUDGET = 1920  # FLAN v2's FEW_SHOT_MAX_LEN
CHARS_PER_TOKEN = 4  # the estimate without a tokenizer (SmolLM2 averages 3.8 on the nli build: README)
MIX_SEPARATORS = ("\n", "\n\n", "\n\n\n")  # FLAN draws one per task for its template mix
DEFAULT_EXAMPLE_SEPARATOR = "\n\n\n"
# Columns added by this module: every build has them; see hash_columns for the content hash.
COLUMNS = ("format", "template_index", "exemplar_indices", "exemplar_hashes")
FALLBACK = "_fewshot_fallback"  # a rendered record's private note, taken off by summarize()
_REASONS = {
    "query_over_budget": "the query alone is over the budget",
    "no_exemplar_fits": "no exemplar fits beside the query within the budget",
    "no_same_template": "no candidate shared the query's template (x_shot)",
    "no_train_rows": "the task has no other train row to draw from",
}


def zero_shot(fmt: str) -> str:
    """The zero-shot format with the same OPTIONS switch: fs_opt -> zs_opt."""
    return "zs_" + fmt.split("_", 1)[1]


def with_options(fmt: str) -> bool:
    return fmt.endswith("_opt")


@dataclass(frozen=True)
class FewShotPattern:
    """How one template's exemplars and query are laid out (FLAN v2's FewShotPattern)."""

    input_prefix: str = ""
    target_prefix: str = ""
    delimiter: str | None = None  # between input and target; None: the build's separator
    separator: str = DEFAULT_EXAMPLE_SEPARATOR  # after each exemplar

    def exemplar(self, text: str, target: str, separator: str) -> str:
        """One exemplar with its trailing example separator."""
        head, tail = self.query(text, separator)
        return head + tail + target + self.separator

    def query(self, text: str, separator: str) -> tuple[str, str]:
        """The query's prompt and the whitespace that starts its completion.

        The prompt ends in non-whitespace and the completion starts with the whitespace, as in
        every zero-shot row, so the prompt tokenises the same alone and joined.
        """
        joint = self.input_prefix + text + (separator if self.delimiter is None else self.delimiter) \
            + self.target_prefix
        head = joint.rstrip()
        return head, joint[len(head):]


def pattern_for(template: TemplateSpec) -> FewShotPattern:
    """A template's pattern: FLAN's defaults with the template's ``fewshot:`` overrides."""
    return FewShotPattern(**template.fewshot)


@dataclass(frozen=True)
class FewShotSettings:
    """What ``flan build --formats/--shots/--fewshot-*`` asked for (recorded in the manifest)."""

    formats: tuple[str, ...] | None = None  # None: today's zero-shot build (zs_opt, or zs_noopt)
    shots: int | None = None  # exemplars drawn per few-shot row; None: DEFAULT_SHOTS[variant]
    variant: str = "mix"
    budget: int = DEFAULT_BUDGET
    tokenizer: str | None = None  # a model alias or path whose tokenizer counts the budget

    def resolved(self, options: bool) -> ResolvedSettings:
        """Checked settings; ``options`` is False under --no-options. Bad values are one-line errors."""
        if self.formats is None:
            formats: tuple[str, ...] = ("zs_opt",) if options else ("zs_noopt",)
        else:
            formats = tuple(self.formats)
            unknown = [f for f in formats if f not in FORMATS]
            if unknown or not formats:
                raise FlanError(f"--formats: unknown format(s) {', '.join(unknown) or '(none given)'}; "
                                f"choose from {', '.join(FORMATS)}")
            if len(set(formats)) != len(formats):
                raise FlanError(f"--formats names a format twice ({','.join(formats)}); name each once")
            if not options:
                raise FlanError("--no-options and --formats together: name zs_noopt / fs_noopt in "
                                "--formats instead of --no-options")
        if self.variant not in VARIANTS:
            raise FlanError(f"--fewshot-variant must be one of {', '.join(VARIANTS)} (got {self.variant!r})")
        if self.shots is not None and self.shots < 0:
            raise FlanError(f"--shots must be 0 or more exemplars per few-shot row (got {self.shots})")
        if self.budget < 1:
            raise FlanError(f"--fewshot-budget must be at least 1 token (got {self.budget})")
        few = [f for f in formats if f.startswith("fs")]
        shots = DEFAULT_SHOTS[self.variant] if self.shots is None else self.shots
        if few and shots == 0:
            raise FlanError(f"--shots 0 leaves {', '.join(few)} without exemplars; give --shots K >= 1 "
                            "or drop the fs_ formats")
        return ResolvedSettings(formats, shots if few else 0, self.variant, self.budget, self.tokenizer)


@dataclass(frozen=True)
class ResolvedSettings:
    formats: tuple[str, ...]
    shots: int
    variant: str
    budget: int
    tokenizer: str | None

    @property
    def plain(self) -> bool:
        """One zero-shot format: the build of earlier versions, rendered the same way."""
        return len(self.formats) == 1 and not self.few_shot

    @property
    def few_shot(self) -> bool:
        return any(f.startswith("fs") for f in self.formats)


def hash_columns(columns: list[str], settings: ResolvedSettings) -> list[str]:
    """The columns the content hash covers: a one-format zero-shot build leaves out COLUMNS.

    Their values follow from its config there (one format, template_index from template_id, no
    exemplars), and leaving them out keeps the hash of every earlier zero-shot build.
    """
    return [c for c in columns if c not in COLUMNS] if settings.plain else list(columns)


# -- planning (main process) -------------------------------------------------------------------


@dataclass
class TaskPlan:
    """One training task's formats and exemplars, drawn in the main process; a worker renders them."""

    formats: list[list[str]]  # per drawn row, per template of that row
    exemplars: list[list[list[int]]]  # source row indices of each (row, template)'s exemplars
    exemplar_templates: list[list[list[int]]]  # the template each exemplar is rendered with
    exemplar_rows: dict[int, dict[str, Any]]  # source index -> row
    variant: str
    budget: int
    tokenizer: str | None
    mix_separator: str
    no_exemplars: bool = False  # the task had nothing to draw exemplars from
    drawn: Counter[str] = field(default_factory=Counter)

    def source_rows(self) -> tuple[list[int], list[dict[str, Any]]]:
        """Every exemplar row (for the contamination check)."""
        indices = sorted(self.exemplar_rows)
        return indices, [self.exemplar_rows[i] for i in indices]


def plan_task(
    spec: TaskSpec, settings: ResolvedSettings, seed: int, drawn: list[int], templates: list[list[int]],
    pool: list[int], allowed: list[int], take: Any,
) -> TaskPlan:
    """Draw each row's format and exemplars; ``take(indices)`` fetches rows of the task's train split."""
    format_rng = task_rng(seed, spec.name, "format")
    exemplar_rng = task_rng(seed, spec.name, "exemplars")
    formats = settings.formats
    no_exemplars = settings.few_shot and len(pool) < 2
    if no_exemplars:
        if not any(f.startswith("zs") for f in formats):
            raise FlanError(f"task {spec.name}: its train split has {len(pool)} row(s), so it has no "
                            "exemplars for a few-shot prompt; add zs_opt / zs_noopt to --formats to keep "
                            "it zero-shot, or leave it out with --tasks")
        print(f"flan build: warning: task {spec.name}: its train split has {len(pool)} row(s), no "
              "other row to draw few-shot exemplars from; its few-shot rows are zero-shot",
              file=sys.stderr)
    k = settings.shots
    plan_formats: list[list[str]] = []
    exemplars: list[list[list[int]]] = []
    exemplar_templates: list[list[list[int]]] = []
    drawn_formats: Counter[str] = Counter()
    for index, row_templates in zip(drawn, templates, strict=True):
        row_formats, row_exemplars, row_exemplar_templates = [], [], []
        for template in row_templates:
            fmt = formats[format_rng.randrange(len(formats))] if len(formats) > 1 else formats[0]
            drawn_formats[fmt] += 1
            chosen: list[int] = []
            chosen_templates: list[int] = []
            if fmt.startswith("fs") and not no_exemplars:
                # k + 1 distinct rows, so that k remain once the query's own row is taken out
                candidates = [i for i in exemplar_rng.sample(pool, min(k + 1, len(pool))) if i != index][:k]
                picked = [allowed[exemplar_rng.randrange(len(allowed))] for _ in candidates]
                for candidate, candidate_template in zip(candidates, picked, strict=True):
                    if settings.variant == "mix" or candidate_template == template:
                        chosen.append(candidate)
                        chosen_templates.append(candidate_template)
            row_formats.append(fmt)
            row_exemplars.append(chosen)
            row_exemplar_templates.append(chosen_templates)
        plan_formats.append(row_formats)
        exemplars.append(row_exemplars)
        exemplar_templates.append(row_exemplar_templates)
    needed = sorted({i for row in exemplars for chosen in row for i in chosen})
    rows = dict(zip(needed, take(needed), strict=True)) if needed else {}
    separator = task_rng(seed, spec.name, "fewshot-separator").choice(MIX_SEPARATORS)
    return TaskPlan(plan_formats, exemplars, exemplar_templates, rows, settings.variant, settings.budget,
                    settings.tokenizer, separator, no_exemplars, drawn_formats)


# -- token counting ------------------------------------------------------------------------------


def budget_unit(tokenizer: str | None) -> str:
    """What the budget counts, in words (the manifest's budget_unit)."""
    if tokenizer:
        return f"tokens of {tokenizer}'s tokenizer"
    return f"estimated tokens (characters / {CHARS_PER_TOKEN}, rounded up)"


class TokenCounter:
    """Counts prompt tokens with a model's tokenizer, or estimates them from characters."""

    def __init__(self, tokenizer: str | None) -> None:
        self.name = tokenizer
        self._tokenizer = _load_tokenizer(tokenizer) if tokenizer else None

    @property
    def exact(self) -> bool:
        return self._tokenizer is not None

    def count(self, texts: list[str]) -> list[int]:
        """Tokens of each text (no special tokens: the budget is the prompt's own text)."""
        if self._tokenizer is None:
            return [math.ceil(len(text) / CHARS_PER_TOKEN) for text in texts]
        if not texts:
            return []
        encoded = self._tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]



@functools.lru_cache(maxsize=4)
def _load_tokenizer(name: str) -> Any:
    """Loaded once per process (each --num-proc worker loads its own)."""
    from flan_builder.models import load_tokenizer, resolve_model

    try:
        import transformers  # noqa: F401
    except ModuleNotFoundError:
        raise FlanError("--fewshot-tokenizer needs transformers: pip install 'flan-builder[train]', or "
                        f"drop the flag to estimate tokens as characters / {CHARS_PER_TOKEN}") from None
    return load_tokenizer(resolve_model(name))


def check_tokenizer(name: str | None) -> None:
    """Load the tokenizer now, so that a bad --fewshot-tokenizer fails before any data loads."""
    if name:
        TokenCounter(name)


# -- rendering (worker) --------------------------------------------------------------------------


def _set_prompt(record: dict[str, Any], prompt: str, completion_text: str | None, style: str) -> None:
    if style == "messages":
        record["prompt"] = [{"role": "user", "content": prompt}]
        if completion_text is not None:
            record["completion"] = [{"role": "assistant", "content": record["target"]}]
    else:
        record["prompt"] = prompt
        if completion_text is not None:
            record["completion"] = completion_text


def query_text(record: dict[str, Any], options: bool) -> str:
    """A rendered row's instruction, with OPTIONS when asked for and the row has options."""
    return record["input"] + options_suffix(record["options"]) if options and record["options"] \
        else record["input"]


def shape_records(records: list[dict[str, Any]], plan: TaskPlan, renderer: Any, spec: TaskSpec,
                  separator: str, style: str) -> list[dict[str, Any]]:
    """Give each rendered zero-shot record its planned format: exemplars, OPTIONS or not, the budget.

    ``records`` are one task's renders in plan order (row by row, template by template), rendered
    with OPTIONS on. A few-shot row that ends up without exemplars keeps its query zero-shot and
    carries a FALLBACK note (a key that summarize() removes).
    """
    places = [(i, j) for i, row in enumerate(plan.formats) for j in range(len(row))]
    if len(places) != len(records):
        raise AssertionError(f"task {spec.name}: {len(records)} records for {len(places)} planned renders")
    counter = TokenCounter(plan.tokenizer)
    patterns = [pattern_for(t) for t in spec.templates]
    rendered: dict[tuple[int, int], Any] = {}
    hashes: dict[int, str] = {}
    pending = []  # (record, fmt, head, tail, exemplar texts, exemplar indices, exemplar hashes)
    for record, (i, j) in zip(records, places, strict=True):
        fmt = plan.formats[i][j]
        options = with_options(fmt)
        record["format"] = fmt
        if not fmt.startswith("fs"):
            if not options:
                _set_prompt(record, record["input"], None, style)
            continue
        pattern = patterns[record["template_index"]]
        head, tail = pattern.query(query_text(record, options), separator)
        texts, kept, kept_hashes = [], [], []
        for source, template in zip(plan.exemplars[i][j], plan.exemplar_templates[i][j], strict=True):
            row = plan.exemplar_rows[source]
            if source not in hashes:
                hashes[source] = row_hash({k: row[k] for k in spec.fields})
            if hashes[source] == record["source_hash"]:  # the query's content under another index
                continue
            if (source, template) not in rendered:
                rendered[(source, template)] = renderer.render(row, template, split=record["source_split"],
                                                               row_index=source)
            example = rendered[(source, template)]
            own = patterns[template]
            text = own.exemplar(example.prompt if options else example.input, example.target, separator)
            if plan.variant == "mix":  # one separator per task between exemplars (FLAN's template mix)
                text = text[: len(text) - len(own.separator)] + plan.mix_separator
            texts.append(text)
            kept.append(source)
            kept_hashes.append(hashes[source])
        pending.append((record, fmt, head, tail, texts, kept, kept_hashes))
    _fit(pending, counter, plan, style)
    return records


def _fit(pending: list[tuple[Any, ...]], counter: TokenCounter, plan: TaskPlan, style: str) -> None:
    """Keep each few-shot row's exemplars, in drawn order, while the whole prompt fits the budget."""
    unique = sorted({t for p in pending for t in (p[2], *p[4])})
    tokens = dict(zip(unique, counter.count(unique), strict=True))
    assembled = []
    for record, fmt, head, tail, texts, kept, kept_hashes in pending:
        room = plan.budget - tokens[head]
        reason = None
        if room < 0:
            count, reason = 0, "query_over_budget"
        else:
            count, used = 0, 0
            for text in texts:
                if used + tokens[text] > room:
                    break
                used += tokens[text]
                count += 1
            if count == 0:
                reason = "no_exemplar_fits" if texts else (
                    "no_train_rows" if plan.no_exemplars else "no_same_template")
        assembled.append([record, fmt, head, tail, texts, kept, kept_hashes, count, reason])
    if counter.exact:
        # Token counts of the parts need not add up to the whole (merges across a joint): check the
        # assembled prompt, dropping exemplars from the end while it is over the budget.
        todo = [a for a in assembled if a[7]]
        while todo:
            totals = counter.count(["".join(a[4][: a[7]]) + a[2] for a in todo])
            over = [a for a, total in zip(todo, totals, strict=True) if total > plan.budget]
            for a in over:
                a[7] -= 1
                if a[7] == 0:
                    a[8] = "no_exemplar_fits"
            todo = [a for a in over if a[7]]
    for record, fmt, head, tail, texts, kept, kept_hashes, count, reason in assembled:
        if count == 0:
            record["format"] = zero_shot(fmt)
            record[FALLBACK] = reason
            _set_prompt(record, query_text(record, with_options(fmt)), None, style)
            continue
        record["exemplar_indices"] = kept[:count]
        record["exemplar_hashes"] = kept_hashes[:count]
        _set_prompt(record, "".join(texts[:count]) + head, tail + record["target"], style)


# -- the manifest --------------------------------------------------------------------------------


@dataclass
class FormatTally:
    """What the manifest's few-shot record counts over the train split, fed row by row
    (``add``) or, by ``writer.py``, a column batch at a time; rows in plan order."""

    per_format: Counter[str] = field(default_factory=Counter)
    few_shot_rows: int = 0
    shots: int = 0  # exemplars, over every few-shot row
    fell_back: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    first: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def add(self, record: dict[str, Any]) -> None:
        """Count one rendered record; takes its FALLBACK note off."""
        reason = record.pop(FALLBACK, None)
        if reason is not None:
            self.add_fallback(record, reason)
        self.per_format[record["format"]] += 1
        if record["format"].startswith("fs"):
            self.few_shot_rows += 1
            self.shots += len(record["exemplar_indices"])

    def add_fallback(self, record: dict[str, Any], reason: str) -> None:
        """A row kept zero-shot (the first of each task and reason is named in the warning)."""
        self.fell_back[record["task"]][reason] += 1
        self.first.setdefault((record["task"], reason), record)

    def summary(self, settings: ResolvedSettings, plans: dict[str, TaskPlan]) -> dict[str, Any]:
        """The manifest's record; prints one warning per task and reason for rows kept zero-shot
        by the token budget."""
        unit = budget_unit(settings.tokenizer)
        for (task, reason), record in sorted(self.first.items()):
            if reason in ("query_over_budget", "no_exemplar_fits"):
                n = self.fell_back[task][reason]
                print(f"flan build: warning: task {task}: {n:,} few-shot row{'s' if n != 1 else ''} kept "
                      f"zero-shot: {_REASONS[reason]} of {settings.budget:,} {unit} (first: "
                      f"template {record['template_id']}, {record['source_split']} row "
                      f"{record['source_index']})", file=sys.stderr)
        drawn: Counter[str] = Counter()
        for plan in plans.values():
            drawn.update(plan.drawn)
        return {
            "formats": list(settings.formats),
            "variant": settings.variant if settings.few_shot else None,
            "shots": settings.shots,
            "budget": settings.budget if settings.few_shot else None,
            "budget_unit": unit if settings.few_shot else None,
            "tokenizer": settings.tokenizer,
            "drawn": {f: drawn[f] for f in settings.formats},
            "per_format": {f: n for f, n in sorted(self.per_format.items(),
                                                   key=lambda item: FORMATS.index(item[0]))},
            "few_shot_rows": self.few_shot_rows,
            "average_shots": round(self.shots / self.few_shot_rows, 3) if self.few_shot_rows else 0.0,
            "kept_zero_shot": {task: dict(sorted(c.items())) for task, c in sorted(self.fell_back.items())},
            "kept_zero_shot_total": sum(sum(c.values()) for c in self.fell_back.values()),
            "tasks_without_exemplars": sorted(task for task, plan in plans.items() if plan.no_exemplars),
            "reasons": _REASONS,
        }


def summarize(settings: ResolvedSettings, plans: dict[str, TaskPlan],
              records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's few-shot record for the train split; takes the FALLBACK notes off the records.

    Prints one warning per task and reason for rows kept zero-shot by the token budget.
    """
    tally = FormatTally()
    for record in records:
        tally.add(record)
    return tally.summary(settings, plans)


def summary_line(record: dict[str, Any]) -> str | None:
    """One line for ``flan build`` (None for a one-format zero-shot build)."""
    per_format = record.get("per_format") or {}
    if len(record.get("formats") or ()) <= 1 and not record.get("few_shot_rows"):
        return None
    total = sum(per_format.values()) or 1
    parts = ", ".join(f"{f} {n:,} ({100 * n / total:.1f}%)" for f, n in per_format.items())
    line = f"formats: {parts}"
    if record.get("few_shot_rows"):
        line += (f"; few-shot ({record['variant']}, {record['shots']} drawn): {record['average_shots']:.2f} "
                 f"exemplars per row, budget {record['budget']:,} {record['budget_unit']}")
        if record["kept_zero_shot_total"]:
            line += f"; {record['kept_zero_shot_total']:,} kept zero-shot"
    return line


__all__ = ["COLUMNS", "DEFAULT_BUDGET", "FORMATS", "VARIANTS", "FewShotPattern", "FewShotSettings",
           "FormatTally", "TaskPlan", "hash_columns", "pattern_for", "plan_task", "shape_records",
           "summarize"]
