"""``flan templates import-promptsource``: a promptsource ``templates.yaml`` as one of our task specs.

promptsource's semantics (``promptsource/templates.py``, as released with P3 / T0): a template is
one Jinja string rendered on a row and split at ``|||`` into input and target, each stripped;
``answer_choices`` is a Jinja string rendered on the row and split at ``|||`` (each choice
stripped), visible to the template as ``answer_choices``; T0 scores a template by ranking the
choices, the gold one being the target. P3 drops a row where a template renders no ``|||`` or an
empty target. Our specs keep input and target as separate templates, options as a list or one
expression and the answer as an index expression, so a template converts when:

- its one ``|||`` sits at the top level (or only inside a ``{% if label != -1 %}``-style guard);
- it needs nothing our sandbox lacks (``choice``/``random`` filters, list mutation, ``zip``);
- its answer index can be derived: ``answer_choices[E]`` gives ``E``, any other target that is
  one expression gives ``OPTIONS.index(target)`` (T0's own rule).

``original_task: false`` templates (they ask something else, e.g. write the hypothesis) become
``inverted: true`` templates (no OPTIONS, trained on, not scored on the held-out split), and so
do templates without ``answer_choices`` in a task that has options. Everything else is skipped
with a reason; nothing is silently rewritten.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2 import meta, nodes

from flan_builder.errors import FlanError
from flan_builder.specs import RESERVED_NAMES, Registry, TaskSpec, load_spec
from flan_builder.templating import make_environment

PIPE = "|||"
# promptsource's own tags; read as plain mappings (SafeLoader: never a Python object).
_TAGS = ("!Template", "!TemplateMetadata", "!TemplateCollection")
# What promptsource gives its templates that our sandbox does not.
_RANDOM_FILTERS = {"choice", "random"}
_PROMPTSOURCE_FILTERS = {"most_frequent", "highlight"}
_MUTATORS = {"append", "extend", "insert", "pop", "remove", "clear", "update", "setdefault",
             "popitem", "sort", "reverse", "add", "discard"}
_BLOCK_OPENERS = {"if", "for", "macro", "call", "filter", "with", "autoescape", "block", "trans"}
# promptsource metric names -> our generation metrics (evaluate modules shipped here).
_METRICS = {"ROUGE": "flan_rouge", "BLEU": "flan_sacrebleu", "Squad": "flan_qa",
            "Trivia QA": "flan_qa", "COQA F1": "flan_qa"}
TEXT_VAR_LENGTH = 2048  # promptsource truncates every {{ }} to this many characters; we do not
DEFAULT_CHECK_ROWS = 64


# -- reading promptsource files -----------------------------------------------------------------

@dataclass(frozen=True)
class PromptsourceTemplate:
    """One entry of a promptsource file, as written."""

    id: str
    name: str
    jinja: str | None
    answer_choices: str | None
    reference: str = ""
    original_task: bool | None = None
    choices_in_prompt: bool | None = None
    metrics: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptsourceFile:
    path: Path
    dataset: str
    subset: str | None
    templates: tuple[PromptsourceTemplate, ...]


class _Loader(yaml.SafeLoader):
    """SafeLoader plus promptsource's tags, each read as a plain mapping."""


def _tagged_mapping(loader: _Loader, node: yaml.Node) -> dict[str, Any]:
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(None, None, f"{node.tag} must be a mapping",
                                                node.start_mark)
    return loader.construct_mapping(node, deep=True)


for _tag in _TAGS:
    _Loader.add_constructor(_tag, _tagged_mapping)


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def read_promptsource(path: Path) -> PromptsourceFile:
    """Parse one ``templates.yaml`` safely; a file that is not promptsource's is a one-line error."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise FlanError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.constructor.ConstructorError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        tag = re.search(r"tag '([^']*)'", exc.problem or "")
        what = f"YAML tag {tag.group(1)}" if tag else (exc.problem or "a YAML construct")
        raise FlanError(f"{path}:{line}: {what} is not one promptsource writes "
                        f"({', '.join(_TAGS[:2])}); only those are read, never as Python "
                        "objects; remove the tag") from None
    except yaml.YAMLError as exc:
        raise FlanError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict) or not isinstance(data.get("templates"), dict):
        raise FlanError(f"{path}: not a promptsource templates file (needs 'dataset' and a "
                        "'templates' mapping of id -> !Template)")
    if not isinstance(data.get("dataset"), str):
        raise FlanError(f"{path}: 'dataset' is missing or not a string")
    templates = []
    for key, entry in data["templates"].items():
        entry = entry if isinstance(entry, dict) else {}
        info = entry.get("metadata") if isinstance(entry.get("metadata"), dict) else {}
        jinja, choices = entry.get("jinja"), entry.get("answer_choices")
        templates.append(PromptsourceTemplate(
            id=str(entry.get("id", key)), name=str(entry.get("name") or key),
            jinja=jinja if isinstance(jinja, str) else None,
            answer_choices=choices if isinstance(choices, str) else None,
            reference=str(entry.get("reference") or ""),
            original_task=info.get("original_task"), choices_in_prompt=info.get("choices_in_prompt"),
            metrics=_strings(info.get("metrics")), languages=_strings(info.get("languages")),
        ))
    subset = data.get("subset")
    return PromptsourceFile(path, data["dataset"], str(subset) if subset is not None else None,
                            tuple(templates))


# -- Jinja as segments ---------------------------------------------------------------------------

# Parsing and analysis only. Our bounded sandbox, not a plain Environment: Jinja folds
# constant expressions while it analyses ('9 ** 9 ** 9' from a stranger's file would hang).
_ANALYSIS_ENV = make_environment()
# Stand-ins so that promptsource's own filters parse (templates using them are refused).
_ANALYSIS_ENV.filters.update({name: str for name in _RANDOM_FILTERS | _PROMPTSOURCE_FILTERS})


@dataclass
class _Seg:
    """A piece of a template: literal text, a ``{{ }}`` or a ``{% %}`` (its tokens kept)."""

    kind: str  # data | var | block
    text: str  # data: the text; var/block: the tag as written
    tokens: list[tuple[str, str]] = field(default_factory=list)  # inside the tag, whitespace too
    raw: bool = False  # data from a {% raw %} block

    @property
    def significant(self) -> list[tuple[str, str]]:
        return [t for t in self.tokens if t[0] != "whitespace"]

    @property
    def keyword(self) -> str:
        words = self.significant
        return words[0][1] if self.kind == "block" and words else ""

    @property
    def opens(self) -> bool:
        """A block that needs an end tag (``{% set x %}`` does, ``{% set x = 1 %}`` does not)."""
        word = self.keyword
        return word in _BLOCK_OPENERS or (word == "set" and ("operator", "=") not in self.tokens)

    def inner(self, replace: dict[str, str] | None = None, skip: int = 0) -> str:
        """The tag's source after ``skip`` significant tokens, with names replaced."""
        out: list[str] = []
        previous = ""
        for kind, value in self.tokens:
            if kind != "whitespace" and skip:
                skip -= 1
                continue
            if replace and kind == "name" and value in replace and previous != ".":
                value = replace[value]
            out.append(value)
            if kind != "whitespace":
                previous = value
        return "".join(out).strip()


def _segments(source: str) -> list[_Seg]:
    """The template's segments, via Jinja's own lexer (whitespace control already applied)."""
    segs: list[_Seg] = []
    current: _Seg | None = None
    in_raw = False
    for _, kind, value in _ANALYSIS_ENV.lexer.tokeniter(source, None):
        if kind == "raw_begin":
            in_raw = True
        elif kind == "raw_end":
            in_raw = False
        elif kind == "data":
            segs.append(_Seg("data", value, raw=in_raw))
        elif kind in ("variable_begin", "block_begin"):
            current = _Seg("var" if kind == "variable_begin" else "block", value)
        elif kind in ("variable_end", "block_end"):
            assert current is not None
            current.text += value
            segs.append(current)
            current = None
        elif current is not None:
            current.text += value
            current.tokens.append((kind, value))
    return segs


def _source(segs: Iterable[_Seg]) -> str:
    return "".join(f"{{% raw %}}{s.text}{{% endraw %}}" if s.raw else s.text for s in segs)


def _literal(text: str) -> str:
    """A Jinja string literal for ``text`` (Jinja unescapes like Python's unicode-escape)."""
    return json.dumps(text, ensure_ascii=False)


class _NotExpression(Exception):
    """The template has a block (loop, set, macro) that no single expression can stand for."""


def _expression(segs: list[_Seg], replace: dict[str, str] | None = None) -> str | None:
    """One Jinja expression that evaluates to what ``segs`` render, or None (blocks besides if)."""
    try:
        expr, end = _sequence(segs, 0, (), replace)
    except (_NotExpression, IndexError):
        return None
    return expr if end == len(segs) else None


def _sequence(segs: list[_Seg], i: int, stops: tuple[str, ...],
              replace: dict[str, str] | None) -> tuple[str, int]:
    parts: list[str] = []
    while i < len(segs):
        seg = segs[i]
        if seg.kind == "data":
            if seg.text:
                parts.append(_literal(seg.text))
            i += 1
        elif seg.kind == "var":
            parts.append(f"({seg.inner(replace)})")
            i += 1
        elif seg.keyword in stops:
            break
        elif seg.keyword == "if":
            branches = [(seg.inner(replace, skip=1), "")]
            body, i = _sequence(segs, i + 1, ("elif", "else", "endif"), replace)
            branches[-1] = (branches[-1][0], body)
            while segs[i].keyword == "elif":
                condition = segs[i].inner(replace, skip=1)
                body, i = _sequence(segs, i + 1, ("elif", "else", "endif"), replace)
                branches.append((condition, body))
            otherwise = '""'
            if segs[i].keyword == "else":
                otherwise, i = _sequence(segs, i + 1, ("endif",), replace)
            if segs[i].keyword != "endif":
                raise _NotExpression
            for condition, body in reversed(branches):
                otherwise = f"({body} if {condition} else {otherwise})"
            parts.append(otherwise)
            i += 1
        else:
            raise _NotExpression
    return (" ~ ".join(parts) if parts else '""'), i


def _text_expression(segs: list[_Seg], replace: dict[str, str] | None = None) -> str | None:
    """One expression for the stripped text ``segs`` render (blank text at either end dropped)."""
    while segs and segs[0].kind == "data" and not segs[0].text.strip():
        segs = segs[1:]
    while segs and segs[-1].kind == "data" and not segs[-1].text.strip():
        segs = segs[:-1]
    if len(segs) == 1 and segs[0].kind == "var":
        inner = segs[0].inner(replace)
        return f"{inner if _simple(inner) else '(' + inner + ')'} | trim"
    expr = _expression(segs, replace)
    return None if expr is None else f"({expr}) | trim"


# -- one template ---------------------------------------------------------------------------------

@dataclass
class Converted:
    """One promptsource template in our format."""

    source: PromptsourceTemplate
    id: str
    input: str
    target: str
    inverted: bool = False
    why_inverted: str = ""
    options: tuple[str, ...] | str | None = None  # only for scored templates
    answer: str | None = None
    references: str | None = None  # [target] as an expression, when the target is one
    names: set[str] = field(default_factory=set)  # row fields it reads


@dataclass(frozen=True)
class Skipped:
    source: PromptsourceTemplate
    reason: str  # a short category, counted by the survey
    detail: str = ""

    def message(self, path: Path) -> str:
        extra = f": {self.detail}" if self.detail else ""
        return (f"{path}: template {self.source.name!r} ({self.source.id}) skipped: "
                f"{self.reason}{extra}")


class _Skip(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def _unsupported(tree: nodes.Template, what: str) -> None:
    """Refuse what promptsource's Environment offers and our sandbox does not."""
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        if isinstance(node, nodes.Filter) and node.name in _RANDOM_FILTERS:
            raise _Skip("random choice ('choice' / 'random' filter)",
                        f"{what} draws at random; a build must be reproducible")
        if isinstance(node, nodes.Filter) and node.name in _PROMPTSOURCE_FILTERS:
            raise _Skip("promptsource-only filter", f"{what} uses '{node.name}'")
        known = _ANALYSIS_ENV.filters if isinstance(node, nodes.Filter) else _ANALYSIS_ENV.tests
        if node.name not in known:  # (promptsource's Environment has Jinja's own and its three)
            raise _Skip("unknown filter or test", f"{what} uses '{node.name}'")
    for node in tree.find_all(nodes.Call):
        if isinstance(node.node, nodes.Getattr) and node.node.attr in _MUTATORS:
            raise _Skip("mutates a list or dict (our sandbox is immutable)",
                        f"{what} calls .{node.node.attr}()")
    if "zip" in meta.find_undeclared_variables(tree):
        raise _Skip("zip() (a promptsource global, not in our sandbox)", f"{what} calls zip()")


def _parse(source: str, what: str) -> nodes.Template:
    try:
        return _ANALYSIS_ENV.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        if "is not allowed" in (exc.message or ""):  # our sandbox refuses include/import/extends
            raise _Skip("include / import / extends", f"{what}: {exc.message}") from None
        raise _Skip("Jinja syntax error", f"{what}: {exc.message}") from None


def _undeclared(source: str) -> set[str]:
    return set(meta.find_undeclared_variables(_ANALYSIS_ENV.parse(source)))


def _is_label_guard(condition: str) -> bool:
    """``label != -1``, ``label >= 0``, ``label > -1``: true for every labelled row."""
    try:
        test = _ANALYSIS_ENV.parse("{% if " + condition + " %}{% endif %}").body[0].test
    except (jinja2.TemplateSyntaxError, IndexError, AttributeError):
        return False
    if not isinstance(test, nodes.Compare) or len(test.ops) != 1:
        return False
    op = test.ops[0]
    try:
        value = op.expr.as_const()
    except nodes.Impossible:
        return False
    return (op.op, value) in (("ne", -1), ("ge", 0), ("gt", -1))


def _split(segs: list[_Seg]) -> tuple[list[_Seg], list[_Seg]]:
    """Input and target segments around the one ``|||``, each a well-formed template."""
    found: list[tuple[int, int, list[_Seg]]] = []
    stack: list[_Seg] = []
    for index, seg in enumerate(segs):
        if seg.kind == "block":
            word = seg.keyword
            if seg.opens:
                stack.append(seg)
            elif word.startswith("end") and stack:
                stack.pop()
            elif word in ("elif", "else") and stack:
                stack[-1] = seg  # the branch the pipe would sit in
        elif seg.kind == "data":
            start = 0
            while (at := seg.text.find(PIPE, start)) >= 0:
                found.append((index, at, list(stack)))
                start = at + len(PIPE)
    if not found:
        raise _Skip("no '|||' between input and target")
    if len(found) > 1:
        raise _Skip("several '|||'", f"{len(found)} separators")
    index, at, open_blocks = found[0]
    for block in open_blocks:
        if block.keyword == "for":
            raise _Skip("'|||' inside a {% for %} loop")
        if block.keyword != "if" or not _is_label_guard(block.inner(skip=1)):
            condition = block.inner(skip=1)
            tag = f"{{% {block.keyword} {condition} %}}".replace("  ", " ")
            if block.keyword in ("if", "elif", "else"):
                raise _Skip("row filter ('|||' inside {% if %})",
                            f"{tag}: promptsource drops the rows where it renders no '|||'; our "
                            "specs have no row filter")
            raise _Skip(f"'|||' inside a {{% {block.keyword} %}} block", tag)
    pipe_seg = segs[index]
    before = _Seg("data", pipe_seg.text[:at], raw=pipe_seg.raw)
    after = _Seg("data", pipe_seg.text[at + len(PIPE):], raw=pipe_seg.raw)
    # A guard around the pipe is closed in the input and opened again in the target.
    closers = [_Seg("block", "{% endif %}", [("name", "endif")]) for _ in open_blocks]
    return [*segs[:index], before, *closers], [*open_blocks, after, *segs[index + 1:]]


def _definitions(segs: list[_Seg]) -> list[_Seg]:
    """Top-level ``{% set %}`` / ``{% macro %}`` pieces of the input, which the target may need."""
    out: list[_Seg] = []
    depth = 0
    capturing = False
    for seg in segs:
        if depth == 0 and seg.keyword in ("set", "macro"):
            capturing = seg.opens
            out.append(seg)
        elif capturing:
            out.append(seg)
        if seg.opens:
            depth += 1
        elif seg.keyword.startswith("end"):
            depth -= 1
            capturing = capturing and depth > 0
    return out


def _assigned(tree: nodes.Template) -> tuple[set[str], set[str]]:
    """Names the template sets at its top level, and those it sets anywhere else."""
    top: set[str] = set()
    nested: set[str] = {n.name for n in tree.find_all(nodes.NSRef)}
    for node in tree.body:
        if isinstance(node, nodes.Assign) and not isinstance(node.target, nodes.NSRef):
            top |= {n.name for n in node.target.find_all(nodes.Name)}
            if isinstance(node.target, nodes.Name):
                top.add(node.target.name)
        elif isinstance(node, nodes.AssignBlock) and isinstance(node.target, nodes.Name):
            top.add(node.target.name)
            nested |= {n.name for n in node.find_all(nodes.Name) if n.ctx == "store"} - {node.target.name}
        elif isinstance(node, nodes.Macro):
            top.add(node.name)
        else:
            nested |= {n.name for n in node.find_all(nodes.Name) if n.ctx == "store"}
    return top, nested


def _answer_index(target: list[_Seg]) -> str | None:
    """``E`` when the target is ``{{ answer_choices[E] }}`` (maybe under a label guard)."""
    body = _no_blank(target)
    if (len(body) == 3 and body[0].keyword == "if" and body[2].keyword == "endif"
            and _is_label_guard(body[0].inner(skip=1))):
        body = body[1:2]
    if len(body) != 1 or body[0].kind != "var":
        return None
    tokens = body[0].significant
    if (len(tokens) < 4 or tokens[0] != ("name", "answer_choices") or tokens[1] != ("operator", "[")
            or tokens[-1] != ("operator", "]")):
        return None
    depth = 0  # the '[' after answer_choices must close only at the end
    for position, (kind, value) in enumerate(tokens[1:], start=1):
        if kind == "operator" and value in "([{":
            depth += 1
        elif kind == "operator" and value in ")]}":
            depth -= 1
            if depth == 0 and position != len(tokens) - 1:
                return None
    start = body[0].tokens.index(("operator", "[")) + 1
    end = len(body[0].tokens) - body[0].tokens[::-1].index(("operator", "]")) - 1
    return _Seg("var", "", body[0].tokens[start:end]).inner()


def _no_blank(segs: list[_Seg]) -> list[_Seg]:
    return [s for s in segs if not (s.kind == "data" and not s.text.strip())]


def _simple(expr: str) -> bool:
    """A name, attribute or subscript path: safe to put a filter after without brackets."""
    return re.fullmatch(r"[A-Za-z_][\w.]*(\[[^\[\]]+\])*", expr) is not None


def _options(choices: str) -> tuple[str, ...] | str:
    """answer_choices as a static list, or one expression giving the list."""
    tree = _parse(choices, "answer_choices")
    _unsupported(tree, "answer_choices")
    segs = _segments(choices)
    if all(s.kind == "data" for s in segs):
        return tuple(part.strip() for part in "".join(s.text for s in segs).split(PIPE))
    if not any(s.kind == "block" for s in segs):
        pieces: list[list[_Seg]] = [[]]
        for seg in segs:
            if seg.kind == "data" and PIPE in seg.text:
                first, *rest = seg.text.split(PIPE)
                pieces[-1].append(_Seg("data", first, raw=seg.raw))
                pieces += [[_Seg("data", part, raw=seg.raw)] for part in rest]
            else:
                pieces[-1].append(seg)
        if len(pieces) > 1:  # every separator is literal text: one expression per choice
            exprs = []
            for piece in pieces:
                bare = _no_blank(piece)  # choices are stripped: blanks around a field do nothing
                exprs.append(bare[0].inner() if len(bare) == 1 and bare[0].kind == "var"
                             else _expression(bare))
            if all(exprs):
                return "[" + ", ".join(e for e in exprs if e) + "]"
        bare = _no_blank(segs)
        joined = re.fullmatch(r"(.+?)\s*\|\s*join\(\s*(['\"])\s*\|\|\|\s*\2\s*\)",
                              bare[0].inner(), re.S) if len(bare) == 1 else None
        if joined:  # {{ choices | join("|||") }}: the list itself
            listed = joined.group(1).strip()
            return f"{listed if _simple(listed) else '(' + listed + ')'} | list"
    expr = _expression(segs)
    if expr is None:
        raise _Skip("answer_choices uses a {% for %} / {% set %} block",
                    "our options are one expression")
    return f"({expr}).split({_literal(PIPE)})"


def _options_expression(options: tuple[str, ...] | str) -> str:
    """The options as an expression giving stripped strings (what answer_choices holds)."""
    if isinstance(options, tuple):
        return "[" + ", ".join(_literal(o) for o in options) + "]"
    return f"({options}) | map('trim') | list"


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:60] or "template"


def convert_template(template: PromptsourceTemplate, template_id: str) -> Converted:
    """One promptsource template in our format, or ``_Skip`` with the reason it cannot be."""
    if template.jinja is None:
        raise _Skip("malformed template entry", "no 'jinja' string")
    tree = _parse(template.jinja, "the template")
    _unsupported(tree, "the template")
    used = _undeclared(template.jinja)
    reserved = sorted(used & (set(RESERVED_NAMES) - {"answer_choices"}))
    if reserved:
        raise _Skip("uses a name flan-builder reserves",
                    f"{', '.join(reserved)} (ours: {', '.join(RESERVED_NAMES)})")
    if "answer_choices" in used and template.answer_choices is None:
        raise _Skip("uses answer_choices but has none")
    segs = _segments(template.jinja)
    input_segs, target_segs = _split(segs)
    for part, part_segs in (("input", input_segs), ("target", target_segs)):
        if not _source(part_segs).strip():
            raise _Skip(f"empty {part}", f"nothing on the {part} side of '|||'")
    input_tree = _ANALYSIS_ENV.parse(_source(input_segs))
    needed = _undeclared(_source(target_segs))
    top, nested = _assigned(input_tree)
    if needed & nested:
        raise _Skip("target needs a name set inside a block of the input",
                    ", ".join(sorted(needed & nested)))
    if needed & top:  # the target is its own template: give it the input's definitions
        target_segs = [*_definitions(input_segs), *target_segs]
    options = _options(template.answer_choices) if template.answer_choices is not None else None
    if template.answer_choices is not None:
        used |= _undeclared(template.answer_choices)
    converted = Converted(template, template_id, _source(input_segs).strip(),
                          _source(target_segs).strip(),
                          names=used - {"answer_choices"} - set(_ANALYSIS_ENV.globals) - top)
    # The target as one expression (answer_choices spelled out): a reference and, failing
    # answer_choices[E], the answer (T0 ranks the choices and the gold one is the target).
    replace = {"answer_choices": f"({_options_expression(options)})"} if options else None
    target_expr = None if needed & top else _text_expression(target_segs, replace)
    if target_expr is not None:
        converted.references = f"[{target_expr}]"
    if options is not None:
        converted.options = options
        index = _answer_index(target_segs)
        if index is None and target_expr is not None:
            index = f"({_options_expression(options)}).index({target_expr})"
        converted.answer = index
    _check_expressions(converted)
    return converted


def _check_expressions(converted: Converted) -> None:
    """Options and answer must compile in our sandbox; a reference that does not is dropped."""
    env = _ANALYSIS_ENV
    checks = (("options", converted.options if isinstance(converted.options, str) else None),
              ("answer", converted.answer), ("references", converted.references))
    for what, expr in checks:
        if not expr:
            continue
        try:
            env.compile_expression(expr)
        except jinja2.TemplateSyntaxError as exc:
            if what == "references":
                converted.references = None
                continue
            raise _Skip("does not compile here", f"{what} {expr!r}: {exc.message}") from None


# -- a whole file -----------------------------------------------------------------------------------

@dataclass
class ImportResult:
    """What became of each template of one promptsource file."""

    file: PromptsourceFile
    task: str
    converted: list[Converted] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    spec_text: str | None = None
    type: str | None = None
    checked_rows: int = 0

    @property
    def counts(self) -> Counter[str]:
        """Converted templates by kind: scored over options, generation, inverted (and why)."""
        counts: Counter[str] = Counter()
        for item in self.converted:
            if item.inverted:
                counts[f"inverted ({item.why_inverted})"] += 1
            else:
                counts["scored over options" if item.options is not None or self.type in
                       ("classification", "multiple_choice") else "generation"] += 1
        return counts


@dataclass(frozen=True)
class TaskInfo:
    """Where the imported task's rows come from: an existing task, or what the user said."""

    name: str
    cluster: str
    source: dict[str, Any]
    license: str = "unknown"
    license_note: str = ""
    fields: tuple[str, ...] = ()
    also_in: tuple[str, ...] = ()
    generation: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None
    known: TaskSpec | None = None


def task_info(file: PromptsourceFile, name: str, registry: Registry | None,
              cluster: str | None = None) -> TaskInfo:
    """Our task's metadata: copied from a known task of that name, else a new task in ``cluster``."""
    if registry is not None and name in registry.tasks:
        spec = registry.tasks[name]
        source: dict[str, Any] = {"hub_id": spec.source.hub_id, "config": spec.source.config,
                                  "mirror": spec.source.mirror, "splits": dict(spec.source.splits)}
        if spec.source.revision:
            source["revision"] = spec.source.revision
        return TaskInfo(name, cluster or spec.cluster, source, spec.license, spec.license_note,
                        spec.fields, spec.also_in if not cluster else (), dict(spec.generation),
                        spec.metric, spec)
    if not cluster:
        known = ", ".join(sorted(registry.tasks)) if registry else ""
        raise FlanError(f"task {name!r} is not a known task; pass --cluster CLUSTER to make it a new "
                        f"task, or name a known one{' (' + known + ')' if known else ''}")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise FlanError(f"task name {name!r}: use letters, digits, '_', '-' or '.' (it names a file)")
    return TaskInfo(name, cluster, {"hub_id": file.dataset, "config": file.subset, "mirror": name,
                                    "splits": {"train": "train", "eval": "validation"}})


def matching_task(file: PromptsourceFile, registry: Registry) -> str | None:
    """The registry task made from the same Hub dataset and config as the file, if one is."""
    for spec in registry.tasks.values():
        hub = spec.source.hub_id.rsplit("/", 1)[-1]
        config = spec.source.config
        if hub == file.dataset and (config == file.subset or (
                file.subset is None and config in (None, "default", "plain_text", file.dataset))):
            return spec.name
    return None


def _decide(result: ImportResult) -> None:
    """Which templates are scored, which are inverted, and the task's type."""
    scored_possible = [c for c in result.converted
                       if c.source.original_task is not False and c.options is not None]
    has_options = any(c.answer is not None for c in scored_possible)
    kept: list[Converted] = []
    for item in result.converted:
        item.inverted, item.why_inverted = False, ""  # decided afresh: the kept set may have changed
        if item.source.original_task is False:
            item.inverted, item.why_inverted = True, "original_task: false"
        elif has_options and item.options is None:
            item.inverted, item.why_inverted = True, "no answer_choices"
        elif has_options and item.answer is None:
            result.skipped.append(Skipped(item.source, "answer index not derivable",
                                          "the target is neither answer_choices[...] nor one "
                                          "expression"))
            continue
        elif not has_options and item.references is None:
            result.skipped.append(Skipped(item.source, "reference not derivable",
                                          "a generation template's target must be one expression"))
            continue
        kept.append(item)
    result.converted = kept
    if not has_options and kept and not any(c.references for c in kept):
        # a generation task needs one reference expression that every row can answer
        result.skipped += [Skipped(c.source, "reference not derivable",
                                   "no template of the file has a target that is one expression")
                           for c in kept]
        result.converted = []
    if has_options:
        static = all(isinstance(c.options, tuple) for c in kept if not c.inverted)
        result.type = "classification" if static else "multiple_choice"
    else:
        result.type = "generation"


def _most_common(values: Sequence[Any]) -> Any:
    return Counter(values).most_common(1)[0][0] if values else None


def _with_choices_prefix(text: str, options: tuple[str, ...] | str) -> str:
    """A template that reads answer_choices where the context has none (or another task's)."""
    if "answer_choices" not in _undeclared(text):
        return text
    return "{% set answer_choices = " + _options_expression(options) + " %}" + text


def _template_entries(result: ImportResult) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """Task-level options/answer/references and each template's entry with its comment."""
    scored = [c for c in result.converted if not c.inverted]
    task_level: dict[str, Any] = {}
    if result.type != "generation":
        task_level["options"] = _most_common([c.options for c in scored])
        task_level["answer"] = _most_common([c.answer for c in scored])
    else:
        task_level["references"] = _most_common([c.references for c in scored]) or _most_common(
            [c.references for c in result.converted if c.references])
    entries = []
    for item in result.converted:
        entry: dict[str, Any] = {"id": item.id}
        input_text, target_text = item.input, item.target
        if item.inverted:
            entry["inverted"] = True
        if (item.inverted or result.type == "generation") and item.options is not None:
            # its own choices, set in the template: the task's options and answer stay as they are
            input_text = _with_choices_prefix(input_text, item.options)
            target_text = _with_choices_prefix(target_text, item.options)
        if result.type == "generation" and not item.inverted:
            if item.references != task_level["references"]:
                entry["references"] = item.references
        elif not item.inverted:
            if item.options != task_level["options"]:
                entry["options"] = _Flow(item.options) if isinstance(item.options, tuple) else item.options
            if item.answer != task_level["answer"]:
                entry["answer"] = item.answer
        entry["input"] = input_text
        entry["target"] = target_text
        source = item.source
        flags = [f"original_task: {str(source.original_task).lower()}",
                 f"choices_in_prompt: {str(source.choices_in_prompt).lower()}"]
        if source.metrics:
            flags.append(f"metrics: {', '.join(source.metrics)}")
        if source.languages:
            flags.append(f"languages: {', '.join(source.languages)}")
        comment = f"promptsource {source.name!r} ({source.id}); {'; '.join(flags)}"
        if item.inverted:
            comment += f"\ninverted: {item.why_inverted} (trained on, not scored)"
        if source.reference:
            comment += f"\nreference: {source.reference}"
        entries.append((comment, entry))
    if isinstance(task_level.get("options"), tuple):
        task_level["options"] = _Flow(task_level["options"])
    return task_level, entries


class _Dumper(yaml.SafeDumper):
    """Literal blocks for multi-line text, so an imported template reads like a shipped one."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _represent_str)


class _Flow(list):  # type: ignore[type-arg]
    """A short list written on one line (options, splits)."""


class _FlowMap(dict):  # type: ignore[type-arg]
    """A short mapping written on one line (splits)."""


_Dumper.add_representer(_Flow, lambda dumper, value: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", value, flow_style=True))
_Dumper.add_representer(_FlowMap, lambda dumper, value: dumper.represent_mapping(
    "tag:yaml.org,2002:map", value, flow_style=True))


def _dump(data: Any, width: int = 100) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=width,
                     default_flow_style=False)


def _comment(text: str, indent: str) -> str:
    return "".join(f"{indent}# {line}\n" for line in text.splitlines())


def render_spec(result: ImportResult, info: TaskInfo) -> str:
    """The task spec YAML for the converted templates."""
    task_level, entries = _template_entries(result)
    names: list[str] = list(info.fields)
    for item in result.converted:
        names += sorted(n for n in item.names if n not in names)
    skipped = Counter(s.reason for s in result.skipped)
    notes = (f"Imported from promptsource ({result.file.dataset}"
             f"{'/' + result.file.subset if result.file.subset else ''}, {result.file.path.name}) by "
             f"flan templates import-promptsource: {len(result.file.templates)} templates, "
             f"{len(result.converted)} converted, {len(result.skipped)} skipped"
             + (f" ({'; '.join(f'{n} {r}' for r, n in skipped.most_common())})" if skipped else "")
             + ". Inverted templates are promptsource's original_task: false ones (and, in a task "
             "with options, those without answer_choices). promptsource truncates each {{ }} to "
             f"{TEXT_VAR_LENGTH} characters; this spec does not.")
    header: dict[str, Any] = {"task": info.name, "cluster": info.cluster}
    if info.also_in:
        header["also_in"] = list(info.also_in)
    header["type"] = result.type
    header["source"] = {k: v for k, v in info.source.items() if v is not None or k == "config"}
    header["source"]["splits"] = _FlowMap(header["source"]["splits"])
    header["license"] = info.license
    if info.license_note:
        header["license_note"] = info.license_note
    header["notes"] = notes
    header["fields"] = _Flow(names)
    header.update(task_level)
    if result.type == "generation":
        metric = info.metric if info.known is not None and info.known.type == "generation" else None
        metric = metric or next((_METRICS[m] for c in result.converted if not c.inverted
                                 for m in c.source.metrics if m in _METRICS), None)
        if metric:
            header["metric"] = metric
        if info.generation and info.known is not None and info.known.type == "generation":
            header["generation"] = dict(info.generation)
    text = f"# Imported from {result.file.path} (promptsource); see notes.\n" + _dump(header)
    text += "templates:\n"
    for comment, entry in entries:
        text += _comment(comment, "  ")
        text += "".join(f"  {line}\n" if line else "\n"
                        for line in _dump([entry], width=1_000_000).splitlines())
    return text


def _assign_ids(templates: Sequence[PromptsourceTemplate]) -> list[str]:
    ids: list[str] = []
    for template in templates:
        base = f"ps_{_slug(template.name)}"
        candidate, n = base, 2
        while candidate in ids:
            candidate, n = f"{base}_{n}", n + 1
        ids.append(candidate)
    return ids


def _load_generated(text: str, info: TaskInfo, scratch: Path) -> TaskSpec:
    path = scratch / info.cluster / f"{info.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return load_spec(path)


def _row_failure(message: str) -> str:
    for key, reason in (("missing field", "missing field"), ("is empty", "renders empty"),
                        ("label out of range", "label out of range"),
                        ("is not in list", "target not among its answer_choices"),
                        ("is null", "null field")):
        if key in message:
            return reason
    return "render error"


def import_file(path: Path, info: TaskInfo, *, rows: dict[str, list[dict[str, Any]]] | None = None,
                scratch: Path) -> ImportResult:
    """Convert a promptsource file for task ``info``; with ``rows``, drop templates that fail on them."""
    from flan_builder.templating import TaskRenderer, TemplateRenderError

    file = read_promptsource(path)
    result = ImportResult(file, info.name)
    for template, template_id in zip(file.templates, _assign_ids(file.templates), strict=True):
        try:
            result.converted.append(convert_template(template, template_id))
        except _Skip as skip:
            result.skipped.append(Skipped(template, skip.reason, skip.detail))
    _decide(result)
    while result.converted:
        text = render_spec(result, info)
        spec = _load_generated(text, info, scratch)
        try:
            renderer = TaskRenderer(spec)
        except FlanError as exc:  # a template our sandbox will not compile: name it and drop it
            bad = next((c for c in result.converted if f"template {c.id}" in str(exc)), None)
            if bad is None:
                raise
            result.skipped.append(Skipped(bad.source, "does not compile here",
                                          " ".join(str(exc).split())[-160:]))
            result.converted.remove(bad)
            _decide(result)
            continue
        failed = _first_failures(renderer, spec, rows or {}, TemplateRenderError)
        if not failed:
            result.spec_text = text
            result.checked_rows = sum(len(r) for r in (rows or {}).values())
            break
        for item in [c for c in result.converted if c.id in failed]:
            result.skipped.append(Skipped(item.source, f"fails on real rows: "
                                          f"{_row_failure(failed[item.id])}", failed[item.id]))
            result.converted.remove(item)
        _decide(result)
    return result


def _first_failures(renderer: Any, spec: TaskSpec, rows: dict[str, list[dict[str, Any]]],
                    error_type: type[Exception]) -> dict[str, str]:
    """Template id -> the first failure on the rows (a row whose context fails blames them all)."""
    failed: dict[str, str] = {}
    for split, split_rows in rows.items():
        for row_index, row in enumerate(split_rows):
            for index, template in enumerate(spec.templates):
                if template.id in failed:
                    continue
                try:
                    renderer.render(row, index, split=split, row_index=row_index)
                except error_type as exc:
                    failed[template.id] = " ".join(str(exc).split())[:300]
    return failed


def mirror_rows(info: TaskInfo, data_dir: Path | None, limit: int) -> dict[str, list[dict[str, Any]]]:
    """The first ``limit`` rows of each split the task uses, from a local mirror (never the Hub)."""
    if data_dir is None:
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for split in dict.fromkeys(info.source["splits"].values()):
        path = data_dir / info.source["mirror"] / f"{split}.jsonl"
        if not path.is_file():
            continue
        rows = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise FlanError(f"{path}:{number} is not valid JSON ({exc.msg}); fix or remove "
                                    "that line") from None
                if len(rows) >= limit:
                    break
        out[split] = rows
    return out


# -- the survey -----------------------------------------------------------------------------------

@dataclass
class Survey:
    files: int = 0
    templates: int = 0
    converted: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    file_errors: Counter[str] = field(default_factory=Counter)
    templates_in_bad_files: int = 0
    checked_files: list[str] = field(default_factory=list)  # rendered on mirrored rows

    @property
    def converted_total(self) -> int:
        """Templates written into a spec (scored, generation or inverted)."""
        return sum(self.converted.values())

    @property
    def skipped_total(self) -> int:
        """Templates left out, each for one counted reason."""
        return sum(self.skipped.values())

    def lines(self) -> list[str]:
        """The report as printed: totals, then a count per kind and per reason."""

        def share(n: int) -> str:
            return f"{n:5d} ({100 * n / max(self.templates, 1):4.1f}%)"

        names = [*self.converted, *self.skipped, *self.file_errors]
        width = min(max((len(n) for n in names), default=10), 70) + 2
        out = [f"{self.files} files, {self.templates} templates",
               f"{'converted':<{width}} {share(self.converted_total)}"]
        out += [f"  {name[:70]:<{width - 2}} {n:5d}" for name, n in self.converted.most_common()]
        out.append(f"{'skipped':<{width}} {share(self.skipped_total)}")
        out += [f"  {name[:70]:<{width - 2}} {n:5d}" for name, n in self.skipped.most_common()]
        if self.file_errors:
            out.append(f"{'unreadable files':<{width}} {sum(self.file_errors.values()):5d} "
                       f"({self.templates_in_bad_files} templates)")
            out += [f"  {name[:70]:<{width - 2}} {n:5d}" for name, n in self.file_errors.most_common()]
        if self.checked_files:
            out.append(f"rendered on mirrored rows: {len(self.checked_files)} files "
                       f"({', '.join(self.checked_files)})")
        return out


def survey(root: Path, registry: Registry | None, data_dir: Path | None, scratch: Path,
           check_rows: int = DEFAULT_CHECK_ROWS) -> Survey:
    """Convert every ``templates.yaml`` under ``root`` and count what converts and why the rest do not."""
    files = sorted(Path(root).rglob("templates.yaml"))
    if not files:
        raise FlanError(f"no promptsource templates.yaml files under {root}")
    from flan_builder.progress import progress

    report = Survey(files=len(files))
    for number, path in enumerate(progress(files, desc="converting", unit="file")):
        try:
            file = read_promptsource(path)
        except FlanError as exc:
            report.file_errors[str(exc).split(": ", 1)[-1][:70]] += 1
            report.templates_in_bad_files += len(re.findall(r"^\s+jinja:", path.read_text(
                encoding="utf-8", errors="replace"), flags=re.M))
            continue
        report.templates += len(file.templates)
        task = matching_task(file, registry) if registry else None
        if task is not None:
            info = task_info(file, task, registry)
        else:
            name = _slug(f"{file.dataset}_{file.subset or ''}") or f"file{number}"
            info = task_info(file, name, None, cluster="promptsource")
        rows = mirror_rows(info, data_dir, check_rows) if task else {}
        try:
            result = import_file(path, info, rows=rows, scratch=scratch / str(number))
        except FlanError as exc:  # counted, so that the survey still adds up
            report.skipped[f"conversion error: {str(exc)[-60:]}"] += len(file.templates)
            continue
        if result.checked_rows:
            report.checked_files.append(f"{file.dataset}{'/' + file.subset if file.subset else ''}")
        report.converted.update(result.counts)
        report.skipped.update(s.reason for s in result.skipped)
    return report


# -- the command ----------------------------------------------------------------------------------

def _templates_file(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "templates.yaml"
    if not path.is_file():
        raise FlanError(f"{path}: no such promptsource file; pass a templates.yaml (or its folder)")
    return path


def _output_path(out: Path, info: TaskInfo) -> Path:
    """``--out``: a ``.yaml`` file, or a templates folder that gets ``<cluster>/<task>.yaml``."""
    out = Path(out)
    if out.suffix in (".yaml", ".yml") and not out.is_dir():
        return out
    return out / info.cluster / f"{info.name}.yaml"


def run_import(path: Path, task: str, *, registry: Registry | None, cluster: str | None,
               out: Path | None, overwrite: bool, strict: bool, data_dir: Path | None,
               check_rows: int, warn: Any) -> tuple[ImportResult, Path | None]:
    """Convert one file and write (or return) the spec; skipped templates go to ``warn``."""
    import tempfile

    from flan_builder.atomic import write_text_atomic

    path = _templates_file(path)
    file = read_promptsource(path)
    info = task_info(file, task, registry, cluster)
    target = _output_path(out, info) if out is not None else None
    if target is not None and target.exists() and not overwrite:
        raise FlanError(f"--out {target} already exists; pass --overwrite to replace it")
    if info.known is not None:
        hub = info.known.source.hub_id.rsplit("/", 1)[-1]
        if hub != file.dataset:
            warn(f"{path} is for dataset {file.dataset}, task {task} reads {info.known.source.hub_id}; "
                 "check that the field names agree")
    rows = mirror_rows(info, data_dir, check_rows)
    with tempfile.TemporaryDirectory(prefix="flan-promptsource-") as scratch:
        result = import_file(path, info, rows=rows, scratch=Path(scratch))
    if strict and result.skipped:
        raise FlanError(f"{result.skipped[0].message(path)} (and {len(result.skipped) - 1} more); "
                        "--strict allows no skipped template; nothing written")
    for skipped in result.skipped:
        warn(skipped.message(path))
    if not result.converted:
        reasons = Counter(s.reason for s in result.skipped).most_common()
        raise FlanError(f"{path}: none of its {len(file.templates)} templates converts "
                        f"({'; '.join(f'{n} {r}' for r, n in reasons)}); nothing written")
    assert result.spec_text is not None
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(target, result.spec_text)
    return result, target


def summary(result: ImportResult, path: Path, target: Path | None) -> str:
    """One line: what was imported, what was skipped, what it was checked on."""
    counts = ", ".join(f"{n} {kind}" for kind, n in result.counts.most_common())
    rows = result.checked_rows
    checked = (f"rendered on {rows} real row{'s' if rows != 1 else ''}" if rows else
               "not rendered on real rows (pass --data-dir with the task's mirror to check)")
    where = f" -> {target}" if target else ""
    return (f"imported {len(result.converted)} of {len(result.file.templates)} templates from {path} "
            f"as task {result.task} ({result.type}: {counts}); {len(result.skipped)} skipped; "
            f"{checked}{where}")
