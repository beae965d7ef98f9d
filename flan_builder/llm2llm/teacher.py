"""The teacher: a prompt per wrong example (Jinja files in ``prompts/``), asked through the LM
interface (a local model with its chat template, or an OpenAI-compatible endpoint), its answers
cached by prompt hash, and parsed back into raw task rows.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flan_builder.errors import FlanError
from flan_builder.llm2llm.task_rows import TaskFormat
from flan_builder.templating import make_environment

PROMPTS = Path(__file__).resolve().parent / "prompts"
ASK_CHUNK = 16  # answers are cached after every chunk, so a stop loses at most one chunk


@dataclass(frozen=True)
class Example:
    """A seed example put to the teacher: its raw row, what the student saw, and what it answered."""

    seed_id: int
    row: dict[str, Any]
    prompt: str  # the rendered instruction the student was graded on
    answer: str  # the correct answer, as text
    student_answer: str | None = None
    options: tuple[str, ...] | None = None  # a multiple-choice row's choices


@dataclass(frozen=True)
class Answer:
    """One teacher reply: which seed example and sample it answers, and the raw text."""

    seed_id: int
    sample: int
    text: str
    cached: bool = False
    pool_index: int | None = None  # the nearest-neighbour control: which held-aside row it gave


def options_of(fmt: TaskFormat, row: dict[str, Any]) -> list[str] | None:
    """The choices of a row (static class names, or the spec's options expression over its fields)."""
    spec = fmt.spec
    if isinstance(spec.options, tuple):
        return list(spec.options)
    if isinstance(spec.options, str):
        env = make_environment()
        value = env.compile_expression(spec.options)(**{**spec.constants, **row})
        return [str(v).strip() for v in value] if isinstance(value, (list, tuple)) else None
    return None


class PromptWriter:
    """Renders the teacher prompt of a task kind (or a user's Jinja file) for one example."""

    def __init__(self, fmt: TaskFormat, path: str | Path | None = None, show_student_answer: bool = False):
        self.fmt, self.show_student_answer = fmt, show_student_answer
        self.path = Path(path) if path else PROMPTS / f"{fmt.kind}.jinja"
        if not self.path.is_file():
            raise FlanError(f"teacher prompt {self.path} not found; teacher.prompt takes a Jinja file")
        env = make_environment()
        try:
            self.template = env.from_string(self.path.read_text(encoding="utf-8"))
        except Exception as exc:  # noqa: BLE001 - a syntax error in a user's prompt file
            raise FlanError(f"teacher prompt {self.path}: {exc}") from None

    def render(self, example: Example) -> str:
        """The teacher prompt for one wrong (or chosen) seed example."""
        fields = [(name, str(example.row.get(name, ""))) for name in self.fmt.inputs]
        try:
            return (
                self.template.render(
                    inputs=list(self.fmt.inputs),
                    labels=self.fmt.labels or list(example.options or []),
                    prompt=example.prompt,
                    answer=example.answer,
                    fields=fields,
                    task=self.fmt.spec.name,
                    student_answer=example.student_answer if self.show_student_answer else None,
                ).strip()
                + "\n"
            )
        except Exception as exc:  # noqa: BLE001 - an undefined name in a user's prompt file
            raise FlanError(f"teacher prompt {self.path}: {exc}") from None


def parse_fields(text: str, names: tuple[str, ...]) -> dict[str, str]:
    """``name: value`` lines (a value may run over several lines) for the given names and 'answer'.

    The first occurrence of each name wins: a teacher that writes a second example after the
    first has the first one kept.
    """
    keys = [*names, "answer"]
    pattern = re.compile(
        r"^\s*[*#>-]*\s*(" + "|".join(re.escape(k) for k in keys) + r")\s*[*]*\s*:\s*(.*)$", re.IGNORECASE
    )
    found: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            key = next(k for k in keys if k.lower() == match.group(1).lower())
            current = None if key in found else key  # a repeated key ends the first example
            if current is None and all(k in found for k in keys):
                break
            if current is not None:
                found[current] = [match.group(2)]
        elif current is not None:
            found[current].append(line)
    return {k: "\n".join(v).strip().strip('"').strip() for k, v in found.items()}


def parse_answer(fmt: TaskFormat, text: str) -> tuple[dict[str, Any] | None, str]:
    """(raw row, "ok") from a teacher's reply, or (None, why it was rejected)."""
    fields = parse_fields(text, fmt.inputs)
    missing = [name for name in (*fmt.inputs, "answer") if not fields.get(name)]
    if missing:
        return None, f"missing {', '.join(missing)}"
    placeholder = [name for name in fmt.inputs if fields[name] in ("...", "…")]
    if placeholder:
        return None, f"placeholder in {', '.join(placeholder)}"
    answer = fields["answer"]
    if fmt.kind == "math" and "####" not in answer:
        return None, "no '#### number' in the answer"
    try:
        options = options_of(fmt, fields) if fmt.kind == "multiple_choice" else None
        return fmt.make_row(fields, answer, options), "ok"
    except FlanError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - an options expression over the teacher's text
        return None, f"unusable fields ({type(exc).__name__})"


def reason_category(verdict: str) -> str:
    """A rejection's kind, for counting: the verdict up to its details."""
    for kind in ("near-copy", "invalid answer", "missing", "placeholder", "no '####'", "unusable fields"):
        if verdict.startswith(kind):
            return kind
    if verdict.startswith("answer "):  # records written before verdicts were prefixed
        return "invalid answer"
    return verdict.split(" (")[0].split(":")[0][:40]


def prompt_key(identity: str, prompt: str, settings: dict[str, Any], round_: int, sample: int) -> str:
    """The cache key of one teacher request: who answers, what is asked, how, in which round
    (iteration), and which sample."""
    blob = json.dumps([identity, prompt, settings, round_, sample], sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class TeacherCache:
    """``teacher_cache.jsonl`` in the work folder: every answer the teacher gave, by prompt hash."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answers: dict[str, str] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    entry = json.loads(line)
                    self.answers[entry["key"]] = entry["text"]

    def add(self, entries: list[tuple[str, str]]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            for key, text in entries:
                handle.write(json.dumps({"key": key, "text": text}) + "\n")
                self.answers[key] = text


class Teacher:
    """A language model asked for new examples; answers are cached so a resumed run never re-asks."""

    def __init__(
        self, lm: Any, identity: str, writer: PromptWriter, cache: TeacherCache, settings: dict[str, Any]
    ) -> None:
        self.lm, self.identity, self.writer, self.cache = lm, identity, writer, cache
        self.settings = settings  # max_new_tokens, temperature, top_p
        self.exhausted: str | None = None  # why the teacher stopped answering (a budget), if it did

    def ask(self, examples: list[Example], samples: int, round_: int = 0) -> list[Answer]:
        """``samples`` answers per example, asked afresh each round (iteration); an example listed
        twice gets further samples. Cached answers are reused; stops early when a budget runs out."""
        from flan_builder.lm.base import GenerationRequest

        wanted: list[tuple[Example, int]] = []
        asked: dict[int, int] = {}
        for example in examples:
            first = asked.get(example.seed_id, 0)
            wanted += [(example, first + k) for k in range(samples)]
            asked[example.seed_id] = first + samples
        prompts = {example.seed_id: self.writer.render(example) for example in examples}
        keys = [prompt_key(self.identity, prompts[e.seed_id], self.settings, round_, k) for e, k in wanted]
        answers = [
            Answer(e.seed_id, k, self.cache.answers[key], cached=True)
            for (e, k), key in zip(wanted, keys, strict=True)
            if key in self.cache.answers
        ]
        todo = [
            (e, k, key) for (e, k), key in zip(wanted, keys, strict=True) if key not in self.cache.answers
        ]
        for start in range(0, len(todo), ASK_CHUNK):
            if self.exhausted:
                break
            chunk = todo[start : start + ASK_CHUNK]
            requests = [
                GenerationRequest(
                    prompts[e.seed_id],
                    self.settings["max_new_tokens"],
                    temperature=self.settings["temperature"],
                    top_p=self.settings["top_p"],
                    chat=True,
                )
                for e, _, _ in chunk
            ]
            try:
                texts = self.lm.generate(requests)
            except FlanError as exc:
                if not getattr(exc, "budget", None):
                    raise
                self.exhausted = str(exc)
                # what came back before the budget ran out was paid for: keep it
                texts = list(getattr(exc, "answers", None) or [None] * len(chunk))
            done = [(item, text) for item, text in zip(chunk, texts, strict=True) if text is not None]
            self.cache.add([(key, text) for (_, _, key), text in done])
            answers += [Answer(e.seed_id, k, text) for (e, k, _), text in done]
        order = {(e.seed_id, k): i for i, (e, k) in enumerate(wanted)}
        return sorted(answers, key=lambda a: order[(a.seed_id, a.sample)])
