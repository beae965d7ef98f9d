"""The template engine: sandboxed, strict Jinja, compiled once, applied to rows.

A template from a stranger cannot run code or change the rows and options it is given
(``ImmutableSandboxedEnvironment``), cannot include other files, and cannot make a render
use unbounded memory or time (``_BoundedEnvironment``: a cap on the length of what any
operation or the whole render produces, checked from an operation's arguments before it runs
where one call could build more than they hold, and a per-render time limit checked in every
loop).
A missing field is an error, not an empty string (``StrictUndefined``). Templates and the
spec's expressions are compiled once per task and reused for every row, which is
what makes rendering fast (promptsource compiles on every ``apply``).
"""

from __future__ import annotations

import functools
import gc
import inspect
import json
import pprint
import re
import threading
import time
import types
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import jinja2
from jinja2 import StrictUndefined, nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.constants import LOREM_IPSUM_WORDS
from jinja2.exceptions import SecurityError
from jinja2.filters import (
    do_format,
    do_indent,
    do_pprint,
    do_replace,
    do_tojson,
    do_urlize,
    do_wordwrap,
    make_attrgetter,
    sync_do_join,
    sync_do_sum,
)
from jinja2.parser import Parser
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from jinja2.utils import Namespace, generate_lorem_ipsum
from markupsafe import Markup

from flan_builder.errors import FlanError
from flan_builder.specs import TaskSpec, TemplateSpec

DEFAULT_SEPARATOR = "\n\n"
# Joins input and target into one compiled template so a row costs one render, not two.
_JOINT = "\x1e\x1f"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def options_suffix(options: list[str]) -> str:
    """FLAN's OPTIONS block, appended after the instruction (one switch for every template)."""
    return "\n\nOPTIONS:\n- " + "\n- ".join(options)


# What one render (or any one operation inside it) may produce, and how long it may take.
MAX_RENDER_CHARS = 100_000
RENDER_TIME_LIMIT_S = 5.0
# Wraps every {% for %} iterable: where the time limit is checked (a loop may produce nothing).
_LOOP_GUARD = "__flan_bounded_loop__"
_render_state = threading.local()
# A format string whose width or precision is huge or comes from an argument ('%*s').
_HUGE_FORMAT = re.compile(r"%[-#0 +]*(?:\d{6,}|\*)|%[-#0 +]*\d*\.(?:\d{6,}|\*)|\{[^{}]*:[^{}]*\d{6,}")
_NOT_ALLOWED = {nodes.Include: "include", nodes.Import: "import", nodes.FromImport: "import",
                nodes.Extends: "extends"}
# Every attribute a plain dict has (its class's: a dict instance has no attributes of its own).
_DICT_ATTRIBUTES = frozenset(dir(dict))
# Exact types for which the sandbox's attribute check depends only on (type, name), so its answer
# can be remembered (the check is a chain of isinstance tests, ABCs included, on every access).
_FIXED_TYPES = frozenset({str, int, float, bool, type(None), list, tuple, dict, LoopContext})
# loop.last and the like: safe names whose values are ints or bools (nothing to wrap or check).
_LOOP_NUMBERS = frozenset({"index", "index0", "revindex", "revindex0", "first", "last", "length",
                           "depth", "depth0"})


class TemplateBudgetError(SecurityError):
    """A template asked for more output, memory or time than a render may use."""


def _too_long(size: int, what: str = "the template", at_least: bool = False) -> TemplateBudgetError:
    return TemplateBudgetError(f"{what} would produce {'at least ' if at_least else ''}{size:,} "
                               f"characters or items, more than the limit of {MAX_RENDER_CHARS:,}")


def _check_size(size: int, what: str = "the template") -> None:
    if size > MAX_RENDER_CHARS:
        raise _too_long(size, what)


def _check_format(fmt: Any) -> None:
    if isinstance(fmt, bytes):
        fmt = fmt.decode("latin-1")
    if isinstance(fmt, str) and _HUGE_FORMAT.search(fmt):
        raise TemplateBudgetError(f"format string {fmt[:40]!r} asks for a huge or computed width")


def _check_int_args(args: Iterable[Any]) -> None:
    """Refuse numeric arguments that size an allocation beyond the cap (center, ljust, indent...)."""
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_RENDER_CHARS:
            raise TemplateBudgetError(f"argument {arg:,} is larger than the limit of "
                                      f"{MAX_RENDER_CHARS:,}")


# -- what one operation would build, worked out from its arguments before it runs ------------------
# Checking a result's length comes too late for operations that can build far more than their
# arguments hold: a list holding one string 10**5 times prints as 10**5 copies of it, a replace of
# 'x' inserts its replacement once per 'x', a join repeats its separator. Each of those is sized
# from its arguments first (only operator, method and filter calls pay for this, never a plain
# {{ field }} that holds text).

_CONTAINERS = (list, tuple, dict, set, frozenset, type({}.keys()), type({}.values()),
               type({}.items()), Namespace)
_STR_ONLY = frozenset({str})
# A printed conversion, width or precision with this many digits asks for a huge field.
_LARGE_NUMBER = re.compile(r"\d{6,}")


def _text_size(value: Any, budget: int = MAX_RENDER_CHARS, as_repr: bool = False,
               active: set[int] | None = None) -> int:
    """An upper bound on ``len(str(value))`` (``len(repr(value))`` with ``as_repr``), worked out
    without building the text; once past ``budget`` it stops and returns what it has counted."""
    if isinstance(value, str):
        if not as_repr:
            return len(value)
        return len(repr(value)) if len(value) <= budget else len(value) + 2
    kind = type(value)
    if kind is int:
        if value.bit_length() <= 64:
            return len(repr(value))
        return value.bit_length() * 31 // 100 + 2  # decimal digits and a sign
    if kind is float or kind is bool or value is None:
        return len(repr(value))
    if isinstance(value, bytes):
        return len(repr(value)) if len(value) <= budget else len(value) + 3
    if isinstance(value, jinja2.Undefined):
        return 0  # the operation fails on it (or prints nothing), as it always did
    if not isinstance(value, _CONTAINERS):
        return len(repr(value) if as_repr else str(value))  # a function, range, loop: a short text
    key = id(value)
    active = set() if active is None else active
    if key in active:
        return 5  # a namespace that holds itself: repr writes '{...}'
    active.add(key)
    try:
        if isinstance(value, Namespace):
            size, value = 13, object.__getattribute__(value, "_Namespace__attrs")
        else:
            size = 2 if kind in (list, tuple, dict) else 24  # 'dict_items([...])', 'frozenset({...})'
        if isinstance(value, dict):
            for name, item in value.items():
                size += 4 + _text_size(name, budget - size, True, active)
                size += _text_size(item, budget - size, True, active)
                if size > budget:
                    break
        else:
            for item in value:
                size += 2 + _text_size(item, budget - size, True, active)
                if size > budget:
                    break
        return size
    finally:
        active.discard(key)


def _check_text(value: Any, what: str, as_repr: bool = False) -> None:
    """Refuse to turn ``value`` into text when that text would pass the cap."""
    if type(value) is not str:
        size = _text_size(value, as_repr=as_repr)
        if size > MAX_RENDER_CHARS:
            raise _too_long(size, what, at_least=True)


def _bounded_str(value: Any, what: str) -> str:
    """``str(value)``, refused before it is built when it would pass the cap."""
    if type(value) is str:
        return value
    _check_text(value, what)
    return str(value)


def _items(values: Any, what: str) -> list[Any] | tuple[Any, ...]:
    """The items an operation is about to go through, at most the cap of them (a generator is
    read here, once, and the list handed on to the operation)."""
    items = values if type(values) in (list, tuple) else list(islice(iter(values), MAX_RENDER_CHARS + 1))
    if len(items) > MAX_RENDER_CHARS:
        raise _too_long(len(items), what, at_least=True)
    return items


def _joined_size(items: Sequence[Any], separator_size: int) -> int:
    """An upper bound on the length of ``separator.join(str(item) for item in items)``."""
    size = separator_size * max(len(items) - 1, 0)
    if size > MAX_RENDER_CHARS:
        return size
    if set(map(type, items)) <= _STR_ONLY:
        return size + sum(map(len, items))
    for item in items:
        size += _text_size(item, MAX_RENDER_CHARS - size)
        if size > MAX_RENDER_CHARS:
            break
    return size


def _check_replace(text: Any, old: Any, new: Any, count: Any, what: str) -> None:
    """Refuse a replace whose result, ``len(text) + text.count(old) * (len(new) - len(old))``,
    would pass the cap (a replace of '' inserts ``new`` between every two characters)."""
    try:
        growth = len(new) - len(old)
        times = text.count(old) if growth > 0 else 0
    except TypeError:
        return  # the replace itself fails, with its own message
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    if times and len(text) + times * growth > MAX_RENDER_CHARS:
        raise _too_long(len(text) + times * growth, what)


def _number(digits: str) -> int:
    if digits == "*" or len(digits) > 7:
        return MAX_RENDER_CHARS + 1
    return int(digits or 0)


def _percent_specs(fmt: str) -> Iterator[tuple[str | None, str, str, str]]:
    """The conversions of a printf-style format as Python reads them: (key, width, precision, type)."""
    end = len(fmt)
    start = fmt.find("%")
    while 0 <= start < end - 1:
        at, key = start + 1, None
        if fmt[at] == "(":  # a key may hold parentheses of its own: '%(a(b))s' reads key 'a(b)'
            depth, at = 1, at + 1
            while at < end and depth:
                depth += {"(": 1, ")": -1}.get(fmt[at], 0)
                at += 1
            key = fmt[start + 2:at - 1]
        while at < end and fmt[at] in "-#0 +":
            at += 1
        fields = []
        for leading in ("", "."):
            if leading and not (at < end and fmt[at] == "."):
                fields.append("")
                continue
            at += len(leading)
            field_start = at
            while at < end and fmt[at] in "0123456789*":
                at += 1
            fields.append(fmt[field_start:at])
        if at < end and fmt[at] in "hlL":
            at += 1
        yield key, fields[0], fields[1], fmt[at] if at < end else ""
        start = fmt.find("%", at + 1)


def _percent_size(fmt: Any, values: Any) -> int:
    """An upper bound on the length of ``fmt % values``: each conversion prints its argument's text
    (a mapping's value may be printed by many conversions), padded to its width."""
    is_bytes = isinstance(fmt, bytes)
    if is_bytes:
        fmt = fmt.decode("latin-1")
    if not isinstance(fmt, str):
        return 0
    positional = values if isinstance(values, tuple) else (values,)
    size, index = len(fmt), 0
    for key, width, precision, kind in _percent_specs(fmt):
        if kind == "%":
            continue
        if key is not None:
            try:
                value = values[key.encode("latin-1") if is_bytes else key]
            except (LookupError, TypeError, jinja2.UndefinedError):
                return size  # the formatting itself fails, with its own message
        elif index < len(positional):
            value, index = positional[index], index + 1
        else:
            return size
        size += _number(width) + _number(precision)
        if kind in "sbr":
            size += _text_size(value, MAX_RENDER_CHARS - size, as_repr=kind == "r")
        elif kind == "a":  # ascii() writes a character as up to 10 ('\U0001f600')
            size += 10 * _text_size(value, MAX_RENDER_CHARS - size, as_repr=True)
        else:  # a number: a float's 309 digits, or an int in octal
            size += 400 + (value.bit_length() // 3 if type(value) is int else 0)
        if size > MAX_RENDER_CHARS:
            return size
    return size


def _check_percent(fmt: Any, values: Any, what: str) -> None:
    _check_format(fmt)
    size = _percent_size(fmt, values)
    if size > MAX_RENDER_CHARS:
        raise _too_long(size, what, at_least=True)


def _json_size(value: Any, step: int | None, depth: int, budget: int) -> int:
    """An upper bound on the length of Jinja's ``tojson`` of ``value`` (HTML-safe JSON; ``step``
    characters of indent a level, or None for one line)."""
    if isinstance(value, str):
        if len(value) > budget:
            return len(value) + 2
        return len(json.dumps(value)) + 5 * sum(map(value.count, "<>&'"))  # '<' -> '\u003c'
    if value is None or isinstance(value, bool):
        return 5  # null, true, false
    if isinstance(value, float):
        return len(repr(value)) + 5  # -inf is written -Infinity
    if isinstance(value, int):
        return _text_size(int(value))
    if not isinstance(value, (list, tuple, dict)):
        return 25  # JSON cannot write it: tojson fails, as it always did
    item_start = 2 if step is None else 2 + step * (depth + 1)  # ', ' or ',\n' and the indent
    size = 2 if step is None else 3 + step * depth
    for item in (value.items() if isinstance(value, dict) else value):
        size += item_start
        if isinstance(value, dict):
            name, item = item
            size += 4 + _json_size(name, None, 0, budget - size)  # a key is a string, then ': '
        size += _json_size(item, step, depth + 1, budget - size)
        if size > budget:
            break
    return size


class _CountingStream:
    """Where ``pprint`` writes when it is only measured: it counts, and refuses past the cap."""

    def __init__(self, what: str) -> None:
        self.size, self.what = 0, what

    def write(self, text: str) -> None:
        self.size += len(text)
        if self.size > MAX_RENDER_CHARS:
            raise _too_long(self.size, self.what, at_least=True)


class _BoundedFieldsMixin:
    """``str.format`` in the sandbox: a field's text is sized before it is built, and the fields
    printed so far are counted (a format string may print one argument many times)."""

    _printed = 0

    def vformat(self, format_string: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        self._printed = 0
        return super().vformat(format_string, args, kwargs)  # type: ignore[misc]

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion in ("r", "a"):
            _check_text(value, "'format'", as_repr=True)
        return super().convert_field(value, conversion)  # type: ignore[misc]

    def format_field(self, value: Any, format_spec: str) -> str:
        _check_text(value, "'format'")
        if _LARGE_NUMBER.search(format_spec):
            raise TemplateBudgetError(f"format spec {format_spec[:40]!r} asks for a huge width "
                                      "or precision")
        text = super().format_field(value, format_spec)  # type: ignore[misc]
        self._printed += len(text)
        if self._printed > MAX_RENDER_CHARS:
            raise _too_long(self._printed, "'format'", at_least=True)
        return text


class _BoundedFormatter(_BoundedFieldsMixin, SandboxedFormatter):
    pass


class _BoundedEscapeFormatter(_BoundedFieldsMixin, SandboxedEscapeFormatter):
    pass


# Methods of str and bytes that can build more than their arguments hold, checked before the call.
def _check_join_call(owner: str | bytes, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    if not args:
        return args
    items = _items(args[0], "'join'")
    _check_size(len(owner) * max(len(items) - 1, 0), "'join'")
    _check_size(len(owner) * max(len(items) - 1, 0)
                + sum(len(item) for item in items if isinstance(item, (str, bytes))), "'join'")
    return (items, *args[1:])


def _check_replace_call(owner: str | bytes, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    if len(args) >= 2:
        count = args[2] if len(args) > 2 else kwargs.get("count", -1)
        _check_replace(owner, args[0], args[1], count, "'replace'")
    return args


def _check_expandtabs_call(owner: str | bytes, args: tuple[Any, ...], kwargs: dict[str, Any]
                           ) -> tuple[Any, ...]:
    tabsize = args[0] if args else kwargs.get("tabsize", 8)
    if isinstance(tabsize, int) and tabsize > 1:
        tabs = owner.count("\t" if isinstance(owner, str) else b"\t")  # type: ignore[arg-type]
        if tabs:
            _check_size(len(owner) + tabs * (tabsize - 1), "'expandtabs'")
    return args


def _check_translate_call(owner: str | bytes, args: tuple[Any, ...], kwargs: dict[str, Any]
                          ) -> tuple[Any, ...]:
    if isinstance(owner, str) and args:  # str.translate may map a character to a whole string
        table, size = args[0], 0
        for char, times in Counter(owner).items():
            try:
                mapped = table[ord(char)]
            except (LookupError, TypeError):
                mapped = char
            size += times * (len(mapped) if isinstance(mapped, str) else 1)
        if size > MAX_RENDER_CHARS and size > len(owner):
            raise _too_long(size, "'translate'")
    return args


_STR_METHOD_CHECKS: dict[str, Callable[[Any, tuple[Any, ...], dict[str, Any]], tuple[Any, ...]]] = {
    "join": _check_join_call, "replace": _check_replace_call, "expandtabs": _check_expandtabs_call,
    "translate": _check_translate_call,
}
_LIPSUM_SIGNATURE = inspect.signature(generate_lorem_ipsum)
_LOREM_WORD = max(map(len, LOREM_IPSUM_WORDS.split())) + 2  # a word, its comma or stop, a space


def _check_lipsum(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """``lipsum(n, html, min, max)`` writes up to n paragraphs of max words."""
    try:
        bound = _LIPSUM_SIGNATURE.bind(*args, **kwargs)
    except TypeError:
        return  # the call itself fails, with its own message
    bound.apply_defaults()
    paragraphs, low, high = (bound.arguments[name] for name in ("n", "min", "max"))
    if all(isinstance(number, int) for number in (paragraphs, low, high)):
        _check_size(max(paragraphs, 0) * (max(low, high, 0) * _LOREM_WORD + 16), "lipsum()")


# -- filters that are sized before they run (the rest are bounded by _bounded_filter) ----------------

@jinja2.pass_eval_context
def _join_filter(eval_ctx: Any, value: Any, d: Any = "", attribute: Any = None) -> str:
    if attribute is not None:
        value = map(make_attrgetter(eval_ctx.environment, attribute), value)
    items = _items(value, "filter 'join'")
    size = _joined_size(items, _text_size(d))
    if size > MAX_RENDER_CHARS:
        raise _too_long(size, "filter 'join'", at_least=True)
    return sync_do_join(eval_ctx, items, d)


@jinja2.pass_eval_context
def _replace_filter(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> str:
    what = "filter 'replace'"
    _check_replace(_bounded_str(s, what), _bounded_str(old, what), _bounded_str(new, what), count, what)
    return do_replace(eval_ctx, s, old, new, count)


def _indent_filter(s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> str:
    step = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    if isinstance(s, str) and step > 0:
        lines = (s + "\n").splitlines()
        indented = len(lines) if blank else len(lines) - lines.count("")
        _check_size(len(s) + step * (indented + 1), "filter 'indent'")
    return do_indent(s, width, first, blank)


@jinja2.pass_environment
def _wordwrap_filter(environment: Any, s: Any, width: int = 79, break_long_words: bool = True,
                     wrapstring: Any = None, break_on_hyphens: bool = True) -> str:
    if isinstance(s, str) and isinstance(wrapstring, str) and len(wrapstring) > 1:
        # The lines are what they would be with '\n' between them (at most twice the text).
        wrapped = do_wordwrap(environment, s, width, break_long_words, "\n", break_on_hyphens)
        _check_size(len(wrapped) + wrapped.count("\n") * (len(wrapstring) - 1), "filter 'wordwrap'")
    return do_wordwrap(environment, s, width, break_long_words, wrapstring, break_on_hyphens)


@jinja2.pass_eval_context
def _urlize_filter(eval_ctx: Any, value: Any, trim_url_limit: Any = None, nofollow: bool = False,
                   target: Any = None, rel: Any = None, extra_schemes: Any = None) -> str:
    what = "filter 'urlize'"
    added = (len(_bounded_str(target, what)) if target is not None else 0) + (
        len(rel) if isinstance(rel, str) else 0)
    if added:  # each link repeats target and rel (escaped: up to 6 characters each)
        plain = do_urlize(eval_ctx, value, trim_url_limit, nofollow, None, None, extra_schemes)
        _check_size(len(plain) + plain.count("<a ") * (6 * added + 32), what)
    return do_urlize(eval_ctx, value, trim_url_limit, nofollow, target, rel, extra_schemes)


@jinja2.pass_eval_context
def _tojson_filter(eval_ctx: Any, value: Any, indent: Any = None) -> str:
    step = len(indent) if isinstance(indent, str) else (
        max(int(indent), 0) if isinstance(indent, int) else None)
    size = _json_size(value, step, 0, MAX_RENDER_CHARS)
    if size > MAX_RENDER_CHARS:
        raise _too_long(size, "filter 'tojson'", at_least=True)
    return do_tojson(eval_ctx, value, indent)


def _pprint_filter(value: Any) -> str:
    what = "filter 'pprint'"
    _check_text(value, what, as_repr=True)  # pprint writes repr(value) whole where it fits a line
    pprint.PrettyPrinter(stream=_CountingStream(what)).pprint(value)  # indents can repeat
    return do_pprint(value)


# Adding lists one at a time copies the sum so far each time: n lists of one item copy n**2 / 2.
_SUM_COPY_LIMIT = 100 * MAX_RENDER_CHARS


@jinja2.pass_environment
def _sum_filter(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    if attribute is not None:
        iterable = map(make_attrgetter(environment, attribute), iterable)
    items = _items(iterable, "filter 'sum'")
    if isinstance(start, (list, tuple)):
        total = copied = len(start)
        for item in items:
            total += len(item) if isinstance(item, (list, tuple)) else 0
            copied += total
        _check_size(total, "filter 'sum'")
        if copied > _SUM_COPY_LIMIT:
            raise TemplateBudgetError(f"filter 'sum' would copy {copied:,} items adding {len(items):,} "
                                      f"lists one at a time, more than the limit of {_SUM_COPY_LIMIT:,}")
    return sync_do_sum(environment, items, None, start)


def _format_filter(value: Any, *args: Any, **kwargs: Any) -> str:
    what = "filter 'format'"
    _check_percent(_bounded_str(value, what), kwargs or args, what)
    return do_format(value, *args, **kwargs)


_SIZED_FILTERS: dict[str, Callable[..., Any]] = {
    "join": _join_filter, "replace": _replace_filter, "indent": _indent_filter,
    "wordwrap": _wordwrap_filter, "urlize": _urlize_filter, "tojson": _tojson_filter,
    "pprint": _pprint_filter, "sum": _sum_filter, "format": _format_filter,
}
# Filters that turn any value into text first (a list's text is checked before it is built), and
# every filter that returns text: its result may not grow past the cap (escape or tojson in a loop
# would otherwise grow a string a step at a time).
_STRINGIFYING_FILTERS = frozenset({"capitalize", "center", "e", "escape", "forceescape", "lower", "safe",
                                   "string", "striptags", "title", "trim", "upper", "urlencode",
                                   "wordcount", "xmlattr"})
_TEXT_FILTERS = _STRINGIFYING_FILTERS | {"format", "indent", "join", "pprint", "replace", "tojson",
                                         "truncate", "urlize", "wordwrap"}


def _bounded_loop(iterable: Iterable[Any]) -> Iterator[Any]:
    """Every template loop runs through here: the render's time limit is checked as it goes."""
    deadline = getattr(_render_state, "deadline", None) or time.monotonic() + RENDER_TIME_LIMIT_S
    if time.monotonic() > deadline:
        raise _too_slow()
    for count, item in enumerate(iterable, 1):
        if not count & 1023 and time.monotonic() > deadline:
            raise _too_slow()
        yield item


def _too_slow() -> TemplateBudgetError:
    return TemplateBudgetError(f"the template ran longer than the {RENDER_TIME_LIMIT_S:g} s "
                               "a render may take (a loop too large?)")


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    offset = 1 if hasattr(func, "jinja_pass_arg") else 0  # context/environment comes first
    if name not in _TEXT_FILTERS:
        @functools.wraps(func)  # keeps jinja_pass_arg
        def checked(*args: Any, **kwargs: Any) -> Any:
            _check_int_args(args[offset + 1:])
            _check_int_args(kwargs.values())
            return func(*args, **kwargs)

        return checked
    what = f"filter '{name}'"
    stringifies = name in _STRINGIFYING_FILTERS

    @functools.wraps(func)
    def checked_text(*args: Any, **kwargs: Any) -> Any:
        _check_int_args(args[offset + 1:])
        _check_int_args(kwargs.values())
        value = args[offset] if len(args) > offset else None
        if stringifies and type(value) is not str:
            _check_text(value, what)
        result = func(*args, **kwargs)
        if (isinstance(result, str) and len(result) > MAX_RENDER_CHARS
                and len(result) > (len(value) if isinstance(value, str) else 0)):
            raise _too_long(len(result), what)
        return result

    return checked_text


def _bounded_join(chunks: Iterable[str]) -> str:
    """``environment.concat``: the text of a ``{% set %}`` block, a macro, a filter block or a
    block, refused before it is joined when it would pass the cap."""
    if type(chunks) is list:
        _check_size(sum(map(len, chunks)), "a macro or block")
        return "".join(chunks)
    parts: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_RENDER_CHARS:
            raise _too_long(size, "a macro or block", at_least=True)
        parts.append(chunk)
    return "".join(parts)


class _BoundedCodeGenerator(CodeGenerator):
    """``a ~ b`` goes through the environment, which bounds the length of the result; a printed
    value goes through ``finalize`` (which refuses null and sizes a list's text before it is built)
    only when it is not a str."""

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    # Jinja writes str(environment.finalize(value)) for every printed value; a str is its own text,
    # so it is printed as it is and only other values pay for finalize (no Python call for a field).
    def _inline_finalize(self, frame: Frame, finalize: Any) -> bool:
        return (finalize.src == "environment.finalize(" and not frame.eval_ctx.volatile
                and not frame.eval_ctx.autoescape)

    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        if not self._inline_finalize(frame, finalize):
            super()._output_child_pre(node, frame, finalize)
            return
        self.write("(_flan_printed if type(_flan_printed := ")

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        if not self._inline_finalize(frame, finalize):
            super()._output_child_post(node, frame, finalize)
            return
        self.write(") is str else environment.finalize(_flan_printed))")


class _BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, immutable, with no includes and a bound on every render's output and time."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _BoundedCodeGenerator
    concat = staticmethod(_bounded_join)  # macros, {% set %} blocks, filter blocks, blocks

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters.update(_SIZED_FILTERS)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.globals[_LOOP_GUARD] = _bounded_loop
        self._safe_attributes: dict[tuple[type, str], bool] = {}

    def getattr(self, obj: Any, attribute: str) -> Any:
        kind = type(obj)
        if kind is dict and attribute not in _DICT_ATTRIBUTES:
            # What the sandbox does once getattr fails (f.name on a row's dict), without the
            # AttributeError: a name that is not one of dict's attributes can only be a key.
            try:
                return obj[attribute]
            except KeyError:
                return self.undefined(obj=obj, name=attribute)
        if kind is LoopContext and attribute in _LOOP_NUMBERS:
            return getattr(obj, attribute)
        return super().getattr(obj, attribute)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        kind = type(obj)
        if kind not in _FIXED_TYPES:
            return super().is_safe_attribute(obj, attr, value)
        safe = self._safe_attributes.get((kind, attr))
        if safe is None:
            safe = self._safe_attributes[kind, attr] = super().is_safe_attribute(obj, attr, value)
        return safe

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for kind, word in _NOT_ALLOWED.items():
            found = next(tree.find_all(kind), None)
            if found is not None:
                raise jinja2.TemplateSyntaxError(
                    f"'{{% {word} %}}' is not allowed: a template cannot include, import or extend "
                    "other templates; write the text into the template", found.lineno, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(nodes.Name(_LOOP_GUARD, "load"), [loop.iter], [], None, None,
                                   lineno=loop.iter.lineno)
        return tree

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(times, int):
                    _check_size(len(seq) * times)
            if (type(left) is int and type(right) is int
                    and left.bit_length() + right.bit_length() > 4 * MAX_RENDER_CHARS):
                raise TemplateBudgetError(f"a product of {left.bit_length() + right.bit_length():,} "
                                          "bits is too large a number")
        elif operator == "+":
            if isinstance(left, (str, bytes, list, tuple)) and isinstance(right, (str, bytes, list, tuple)):
                _check_size(len(left) + len(right))
        elif operator == "**":
            if (isinstance(left, int) and isinstance(right, int) and abs(left) > 1
                    and right * abs(left).bit_length() > 4 * MAX_RENDER_CHARS):
                raise TemplateBudgetError(f"{left} ** {right} is too large a number")
        elif operator == "%" and isinstance(left, (str, bytes)):
            _check_percent(left, right, "'%' formatting")
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        deadline = getattr(_render_state, "deadline", None)  # macros may recurse without a loop
        if deadline is not None and time.monotonic() > deadline:
            raise _too_slow()
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        if isinstance(owner, (str, bytes)):  # 'x'.ljust(10**10), '{:>{}}'.format('x', 10**10)
            _check_int_args(args)
            _check_int_args(kwargs.values())
            name = getattr(__obj, "__name__", None)
            # only a format call reads the text as a format: GSM8K's '15% * $1000'.split() is data
            if name in ("format", "format_map"):
                _check_format(owner)
            elif name in _STR_METHOD_CHECKS:  # s.replace('x', t), sep.join(items): sized first
                args = _STR_METHOD_CHECKS[name](owner, args, kwargs)
            result = super().call(__context, __obj, *args, **kwargs)
            if (isinstance(result, (str, bytes)) and len(result) > MAX_RENDER_CHARS
                    and len(result) > len(owner)):  # upper, encode...: may not grow past the cap
                raise _too_long(len(result), f"'{name}'")
            return result
        if __obj is generate_lorem_ipsum:
            _check_lipsum(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format`` and ``format_map``, sandboxed as Jinja does, through a formatter that sizes
        each field before it is built and stops once the fields pass the cap."""
        if (not isinstance(value, (types.MethodType, types.BuiltinMethodType))
                or value.__name__ not in ("format", "format_map")):
            return None
        owner = value.__self__
        if not isinstance(owner, str):
            return None
        kind = type(owner)
        is_format_map = value.__name__ == "format_map"
        formatter: SandboxedFormatter = (
            _BoundedEscapeFormatter(self, escape=owner.escape) if isinstance(owner, Markup)
            else _BoundedFormatter(self))

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            return kind(formatter.vformat(owner, args, kwargs))

        return functools.update_wrapper(wrapper, value)

    def bounded_concat(self, parts: tuple[Any, ...]) -> str:
        try:
            text = "".join(parts)
        except TypeError:  # a part that is not text: each turned into text, none past the cap
            text = "".join([_bounded_str(part, "'~'") for part in parts])
        _check_size(len(text))
        return text


class NullValueError(ValueError):
    """A template printed a null value (it would appear as the text "None")."""


def _printed_text(value: Any) -> str:
    """``environment.finalize``: the text of a printed value that is not a str. Null is refused (it
    would print as 'None'); a list's or mapping's text is sized before it is built."""
    if value is None:
        raise NullValueError("a value printed by the template is null")
    if isinstance(value, str) or hasattr(value, "__html__"):
        return value  # Markup stays Markup: {% autoescape %} must not escape it again
    return _bounded_str(value, "printing a value")


def make_environment() -> SandboxedEnvironment:
    """The one Jinja environment every template and expression is compiled in."""
    return _BoundedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False,
        finalize=_printed_text,  # a null field that is printed is an error; one never printed is fine
    )


def can_run_long(env: jinja2.Environment, source: str) -> bool:
    """True when a template has loops, macros or calls: only those can outgrow the per-operation caps."""
    tree = env.parse(source)
    return any(True for _ in tree.find_all((nodes.For, nodes.Macro, nodes.CallBlock, nodes.Call)))


def _new_context(template: jinja2.Template, ctx: dict[str, Any]) -> Context:
    """``template.new_context(ctx, shared=True)`` without copying the globals' keys into a set on
    every render (they are read only by ``make_module``, which imports need, and imports are refused)."""
    return Context(template.environment, ctx, template.name, template.blocks)


def render_bounded(template: jinja2.Template, ctx: dict[str, Any], can_run_long: bool = True) -> str:
    """Render on a shared context, stopping at the output cap and (in loops and calls) the time limit."""
    chunks = template.root_render_func(_new_context(template, ctx))
    return _join_bounded(chunks) if can_run_long else _join_capped(chunks)


def _join_capped(chunks: Iterator[str]) -> str:
    """The output of a template whose every operation is capped already: one join, then the total."""
    text = "".join(chunks)
    if len(text) > MAX_RENDER_CHARS:
        raise _too_long(len(text))
    return text


def _join_bounded(chunks: Iterator[str]) -> str:
    """The output of a template that may loop or call: the cap is checked as the chunks come, and
    the time limit (in loops and calls) from now."""
    _render_state.deadline = time.monotonic() + RENDER_TIME_LIMIT_S
    try:
        parts: list[str] = []
        append = parts.append
        size = 0
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_RENDER_CHARS:
                raise _too_long(size)
            append(chunk)
        return "".join(parts)
    finally:
        _render_state.deadline = None


@dataclass(frozen=True)
class RenderedExample:
    """One (row, template) pair turned into text, with what evaluation needs."""

    template_id: str
    inverted: bool
    input: str  # the instruction without the OPTIONS suffix
    prompt: str  # what the model sees: input, plus OPTIONS when switched on
    target: str
    completion: str  # separator + target (the prompt ends in non-whitespace)
    options: list[str]
    answer_index: int
    references: list[str]


def _example(template_id: str, inverted: bool, input: str, prompt: str, target: str,
             completion: str, options: list[str], answer_index: int, references: list[str],
             ) -> RenderedExample:
    """``RenderedExample(...)`` for the render loop: a frozen dataclass's ``__init__`` sets each
    field through ``object.__setattr__``, which costs as much as rendering a short template."""
    example = object.__new__(RenderedExample)
    example.__dict__.update(template_id=template_id, inverted=inverted, input=input, prompt=prompt,
                            target=target, completion=completion, options=options,
                            answer_index=answer_index, references=references)
    return example


class TemplateRenderError(FlanError):
    """A template failed on a row; the message names task, template, split and row."""


class _RowProblem(Exception):
    """A spec's value that does not fit a row; the caller adds which task, template and row."""


def _undefined_name(exc: jinja2.UndefinedError) -> str:
    match = re.search(r"'([^']+)' is undefined|has no attribute '([^']+)'", str(exc))
    if match:
        return match.group(1) or match.group(2)
    return str(exc)


# What a template's own code can raise while it runs (1/0, 10**10 as a range, endless macro
# recursion, 'a' - 1): the template's fault, reported like any template error.
_TEMPLATE_FAULTS = (ArithmeticError, RecursionError, MemoryError, ValueError, TypeError)


def _render_error(
    exc: Exception, where: str, row: Mapping[str, Any], fix: str
) -> TemplateRenderError:
    """A Jinja failure on a row, as a message naming what failed and what to fix."""
    if isinstance(exc, MissingKeyError):
        return TemplateRenderError(f"{where}: {exc}")
    if isinstance(exc, NullValueError):
        nulls = [name for name in sorted(row) if row[name] is None]
        what = f"field '{nulls[0]}' is null" if len(nulls) == 1 else (
            f"fields {', '.join(nulls)} are null" if nulls else "a value it prints is null")
        return TemplateRenderError(f"{where}: {what} (it would print as 'None'); fill it in the data "
                                   f"or drop the row")
    if isinstance(exc, jinja2.UndefinedError):
        return TemplateRenderError(
            f"{where}: missing field '{_undefined_name(exc)}' (the row has: "
            f"{', '.join(sorted(row))}); fix {fix} or the data"
        )
    if not isinstance(exc, jinja2.TemplateError):
        text = (str(exc).splitlines() or [""])[0][:200]
        return TemplateRenderError(f"{where}: the template failed: {type(exc).__name__}"
                                   f"{': ' + text if text else ''}; fix {fix}")
    return TemplateRenderError(f"{where}: {' '.join(str(exc).split())}")


class _Expression:
    """A compiled spec expression (options / answer / references) with fast paths for a name and
    a list of names."""

    def __init__(self, env: SandboxedEnvironment, source: str) -> None:
        self.source = source.strip()
        if self.source.startswith("{{") and self.source.endswith("}}"):
            inner = self.source[2:-2].strip()
            raise jinja2.TemplateSyntaxError(
                f"{self.source!r} is wrapped in {{{{ }}}}, but options/answer/references are bare "
                f"expressions: drop the braces ({inner!r})", 1)
        if _IDENTIFIER.fullmatch(self.source):
            name = self.source
            self._call: Callable[[Mapping[str, Any]], Any] = lambda ctx: ctx[name]
            self._name: str | None = name
        elif (names := _name_list(env, self.source)) is not None:
            # '[sol1, sol2]': what Jinja gives, except that a missing name fails here rather than
            # where the list's item is turned into text (every caller does that, with this message)
            def pick(ctx: Mapping[str, Any]) -> list[Any]:
                try:
                    return [ctx[name] for name in names]
                except KeyError as exc:
                    raise jinja2.UndefinedError(f"{exc.args[0]!r} is undefined") from None

            self._call = pick
            self._name = None
        else:
            env.compile_expression(self.source)  # validates: one expression, nothing after it
            # Evaluated like compile_expression does, but on the shared context (no copy).
            template = env.from_string("{% set result = (" + self.source + ") %}")

            def evaluate(ctx: dict[str, Any]) -> Any:
                context = _new_context(template, ctx)
                for _ in template.root_render_func(context):
                    pass
                return context.vars["result"]

            plain = _plain_expression(env, self.source)
            if plain is None:
                self._call = evaluate
            else:  # Jinja's code only where the plain one cannot say (it then gives what it gives)
                def either(ctx: dict[str, Any]) -> Any:
                    value = plain(ctx)
                    return evaluate(ctx) if value is _NOT_PLAIN else value

                self._call = either
            self._name = None

    def __call__(self, ctx: Mapping[str, Any]) -> Any:
        try:
            value = self._call(ctx)
        except KeyError:
            raise jinja2.UndefinedError(f"'{self._name}' is undefined") from None
        if isinstance(value, jinja2.Undefined):
            owner = getattr(value, "_undefined_obj", jinja2.utils.missing)
            if isinstance(owner, Mapping):  # e.g. {'entailment': 0}[label] with a label not in the map
                keys = ", ".join(repr(k) for k in list(owner)[:10])
                raise MissingKeyError(f"{self.source!r}: the row's value {value._undefined_name!r} is "
                                      f"not a key of the mapping ({keys}); add it to the map in the "
                                      "spec or fix the row")
            value._fail_with_undefined_error()
        return value


def _parse_expression(env: SandboxedEnvironment, source: str) -> nodes.Expr | None:
    """A spec expression's tree, or None when it is not one whole expression."""
    try:
        parser = Parser(env, source, state="variable")
        node = parser.parse_expression()
    except jinja2.TemplateSyntaxError:
        return None
    return node if parser.stream.eos else None


def _name_list(env: SandboxedEnvironment, source: str) -> list[str] | None:
    """The names of an expression that is a list of bare names (``[answer]``), else None."""
    node = _parse_expression(env, source)
    if isinstance(node, nodes.List) and all(isinstance(item, nodes.Name) for item in node.items):
        return [item.name for item in node.items]
    return None


class _NotPlain(Exception):
    """The fast renderer met what only Jinja's own code handles (the caller renders with Jinja)."""


def _key(owner: Any, name: str) -> Any:
    """``owner.name`` as the environment's ``getattr`` reads it on a plain dict: the key."""
    if type(owner) is not dict:
        raise _NotPlain
    return owner[name]


def _plain_join(items: Any, separator: str) -> str:
    """``items | join(separator)`` for a list of str within the cap (what the bounded filter gives)."""
    if type(items) not in (list, tuple) or any(type(item) is not str for item in items):
        raise _NotPlain
    if sum(map(len, items)) + len(separator) * max(len(items) - 1, 0) > MAX_RENDER_CHARS:
        raise _NotPlain
    return separator.join(items)


def _plain_replace(text: Any, old: str, new: str) -> str:
    """``text | replace(old, new)`` for a str whose result stays within the cap."""
    if type(text) is not str:
        raise _NotPlain
    if len(new) > len(old) and len(text) + text.count(old) * (len(new) - len(old)) > MAX_RENDER_CHARS:
        raise _NotPlain
    return text.replace(old, new)


# str methods a template may call through the plain renderer: their result is never longer than
# the text, so they need none of the sandbox's size checks.
_PLAIN_STR_METHODS = frozenset({"split", "strip", "lstrip", "rstrip"})


def _str_call(text: Any, method: str, *args: str) -> Any:
    """``text.method(*args)`` on a str, as the sandbox calls it."""
    if type(text) is not str:
        raise _NotPlain
    return getattr(text, method)(*args)


# A loop longer than this is left to Jinja, which checks the time limit as it goes.
_PLAIN_LOOP_ITEMS = 10_000


class _PlainCompiler:
    """Python source for a template of text, printed names, subscripts, dict fields (``f.name``),
    ``join`` / ``replace`` filters with text arguments and flat ``{% for %}`` loops over a list
    with ``loop.first`` / ``loop.last`` choices (the tabular serialisations): 492 of the 536
    shipped templates. Anything else is not compiled, and renders with Jinja's own code."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.literals: dict[str, str] = {}
        self.count = 0

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"_{stem}{self.count}"

    def literal(self, text: str) -> str:
        name = f"_t{len(self.literals)}"
        self.literals[name] = text
        return name

    def expression(self, node: nodes.Node, scope: dict[str, str]) -> str | None:
        """A Python expression for a Jinja one, or None; ``scope`` maps loop names to variables."""
        if isinstance(node, nodes.Name) and node.ctx == "load" and node.name != "loop":
            return scope.get(node.name) or f"ctx[{node.name!r}]"
        if isinstance(node, nodes.Const) and type(node.value) in (str, int):
            return repr(node.value)
        if isinstance(node, nodes.Neg) and isinstance(node.node, nodes.Const) \
                and type(node.node.value) is int:
            return repr(-node.node.value)
        if isinstance(node, nodes.List):
            items = [self.expression(item, scope) for item in node.items]
            return None if None in items else f"[{', '.join(items)}]"
        if (isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr)
                and node.node.attr in _PLAIN_STR_METHODS and len(node.args) <= 1
                and not (node.kwargs or node.dyn_args or node.dyn_kwargs)
                and all(isinstance(arg, nodes.Const) and type(arg.value) is str for arg in node.args)):
            owner = self.expression(node.node.node, scope)
            if owner is None:
                return None
            return f"_str_call({owner}, {node.node.attr!r}{''.join(f', {a.value!r}' for a in node.args)})"
        if isinstance(node, nodes.Getitem) and node.ctx == "load":
            owner, key = self.expression(node.node, scope), self.expression(node.arg, scope)
            return None if owner is None or key is None else f"{owner}[{key}]"
        if (isinstance(node, nodes.Getattr) and node.ctx == "load" and node.attr not in _DICT_ATTRIBUTES
                and not (isinstance(node.node, nodes.Name) and node.node.name == "loop")):
            owner = self.expression(node.node, scope)
            if owner is None:
                return None
            # the loop's own item is checked to be a dict once an iteration
            if owner == scope.get("loop item"):
                return f"{owner}[{node.attr!r}]"
            return f"_key({owner}, {node.attr!r})"
        if isinstance(node, nodes.Filter) and node.node is not None and not (node.kwargs or node.dyn_args
                                                                             or node.dyn_kwargs):
            value = self.expression(node.node, scope)
            texts = [arg.value for arg in node.args
                     if isinstance(arg, nodes.Const) and type(arg.value) is str]
            if value is None or len(texts) != len(node.args):
                return None
            if node.name == "join" and len(texts) <= 1:
                return f"_plain_join({value}, {(texts or [''])[0]!r})"
            if node.name == "replace" and len(texts) == 2:
                return f"_plain_replace({value}, {texts[0]!r}, {texts[1]!r})"
        return None

    def loop_test(self, test: nodes.Node, scope: dict[str, str]) -> str | None:
        """``(not) loop.first`` / ``(not) loop.last`` inside a loop, as a Python condition."""
        negate = isinstance(test, nodes.Not)
        if negate:
            test = test.node
        if not ("loop" in scope and isinstance(test, nodes.Getattr) and isinstance(test.node, nodes.Name)
                and test.node.name == "loop" and test.attr in ("first", "last")):
            return None
        index, last = scope["loop"].split(",")
        compared = "0" if test.attr == "first" else last
        return f"{index} {'!=' if negate else '=='} {compared}"

    def choice(self, node: nodes.CondExpr, scope: dict[str, str]) -> str | None:
        """``"a" if (not) loop.last/first else "b"`` inside a loop, both branches text: a str."""
        branches = (node.expr1, node.expr2)
        condition = self.loop_test(node.test, scope)
        if condition is None or not all(isinstance(n, nodes.Const) and type(n.value) is str
                                        for n in branches):
            return None
        return f"({self.literal(node.expr1.value)} if {condition} else {self.literal(node.expr2.value)})"

    def output(self, node: nodes.Output, scope: dict[str, str], pad: str, parts: list[str]) -> bool:
        """Assign each printed value (as text) to a variable; add the parts to ``parts``."""
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                parts.append(self.literal(child.data))
            elif isinstance(child, nodes.Const):
                if type(child.value) is not str:
                    return False
                parts.append(self.literal(child.value))
            elif isinstance(child, nodes.CondExpr):
                text = self.choice(child, scope)
                if text is None:
                    return False
                parts.append(text)
            else:
                expression = self.expression(child, scope)
                if expression is None:
                    return False
                var = self.fresh("v")
                self.lines += [f"{pad}{var} = {expression}",
                               f"{pad}if type({var}) is not str: {var} = _env.finalize({var})"]
                parts.append(var)
        return True

    def flush(self, parts: list[str], pad: str) -> None:
        """Join what a stretch of the template printed, add it to the output and to its size."""
        if not parts:
            return
        # each part is a variable or a conditional of variables: no quote, brace or backslash
        piece = parts[0] if len(parts) == 1 else "f'" + "".join(f"{{{part}}}" for part in parts) + "'"
        self.lines += [f"{pad}_piece = {piece}", f"{pad}_add(_piece)", f"{pad}_size += len(_piece)"]
        parts.clear()

    def body(self, body: list[nodes.Node], scope: dict[str, str], pad: str) -> bool:
        parts: list[str] = []
        for node in body:
            if isinstance(node, nodes.Output):
                if not self.output(node, scope, pad, parts):
                    return False
            elif isinstance(node, nodes.For):
                self.flush(parts, pad)
                if not self.loop(node, scope, pad):
                    return False
            elif isinstance(node, nodes.If) and not node.elif_:  # {% if not loop.last %}; {% endif %}
                condition = self.loop_test(node.test, scope)
                if condition is None:
                    return False
                self.flush(parts, pad)
                self.lines.append(f"{pad}if {condition}:")
                mark = len(self.lines)
                if not self.body(node.body, scope, pad + "  "):
                    return False
                if len(self.lines) == mark:
                    self.lines.append(f"{pad}  pass")
                if node.else_:
                    self.lines.append(f"{pad}else:")
                    if not self.body(node.else_, scope, pad + "  "):
                        return False
            else:
                return False
        self.flush(parts, pad)
        return True

    def loop(self, node: nodes.For, scope: dict[str, str], pad: str) -> bool:
        iterable = node.iter  # _parse wraps every loop's iterable in the loop guard
        if (isinstance(iterable, nodes.Call) and isinstance(iterable.node, nodes.Name)
                and iterable.node.name == _LOOP_GUARD and len(iterable.args) == 1):
            iterable = iterable.args[0]
        if ("loop" in scope or node.else_ or node.test is not None or node.recursive
                or not isinstance(node.target, nodes.Name)):
            return False
        items = self.expression(iterable, scope)
        if items is None:
            return False
        seq, index, item, last = self.fresh("seq"), self.fresh("i"), self.fresh("item"), self.fresh("last")
        self.lines += [f"{pad}{seq} = {items}",
                       f"{pad}if type({seq}) is not list or len({seq}) > {_PLAIN_LOOP_ITEMS}:",
                       f"{pad}  raise _NotPlain",
                       f"{pad}{last} = len({seq}) - 1",
                       f"{pad}for {index}, {item} in enumerate({seq}):"]
        inner = {**scope, node.target.name: item, "loop": f"{index},{last}"}
        uses_fields = any(isinstance(n.node, nodes.Name) and n.node.name == node.target.name
                          for n in node.find_all(nodes.Getattr))
        if uses_fields:
            inner["loop item"] = item
            self.lines.append(f"{pad}  if type({item}) is not dict: raise _NotPlain")
        if not self.body(node.body, inner, pad + "  "):
            return False
        self.lines.append(f"{pad}  if _size > {MAX_RENDER_CHARS}: raise _NotPlain")
        return True


_PLAIN_HELPERS: dict[str, Any] = {"_key": _key, "_NotPlain": _NotPlain, "_plain_join": _plain_join,
                                  "_plain_replace": _plain_replace, "_str_call": _str_call}
_NOT_PLAIN = object()


def _plain_expression(env: SandboxedEnvironment, source: str) -> Callable[[dict[str, Any]], Any] | None:
    """A spec expression (``[answer.split('####')[-1].strip()]``, ``answers.text``) as plain Python
    where ``_PlainCompiler`` takes it, else None. It gives ``_NOT_PLAIN`` wherever Jinja's code
    would take another path (a missing key, a failed subscript, a method of something not a str)."""
    node = _parse_expression(env, source)
    expression = None if node is None else _PlainCompiler().expression(node, {})
    if expression is None:
        return None
    code = (f"def _value(ctx):\n  try:\n    return {expression}\n"
            "  except Exception:\n    return _NOT_PLAIN\n")
    namespace: dict[str, Any] = {"_NOT_PLAIN": _NOT_PLAIN, **_PLAIN_HELPERS}
    exec(compile(code, "<flan-builder plain expression>", "exec"), namespace)  # noqa: S102
    return namespace["_value"]


def _plain_renderer(env: SandboxedEnvironment, source: str) -> Callable[[dict[str, Any]], str | None] | None:
    """A plain Python function for a template ``_PlainCompiler`` takes, else None.

    It does what Jinja's generated code does on such a template (a name is the context's value; a
    subscript is ``obj[key]``, as the sandbox's ``getitem`` does first; ``f.name`` on a dict is its
    key, as the environment's ``getattr`` reads it; a printed value that is not a str goes through
    ``finalize``; the output cap, checked as a loop goes) without the Context, the generator and the
    name resolution around it. It returns None wherever that code would take another path (a
    missing name or key, a failed subscript, a null value, something not a list looped over, the
    cap, a loop of more than 10,000 items): the caller then renders with Jinja, which gives what it
    gives. Generated from the parsed tree: names are Jinja identifiers and literals are ``repr``'d
    or passed as values, so the source holds nothing from a template but data."""
    compiler = _PlainCompiler()
    if not compiler.body(env.parse(source).body, {}, "    "):
        return None
    code = ("def _render(ctx):\n  _parts = []\n  _add = _parts.append\n  _size = 0\n  try:\n"
            + "".join(f"{line}\n" for line in compiler.lines)
            + "  except Exception:\n    return None\n"
            + f"  return ''.join(_parts) if _size <= {MAX_RENDER_CHARS} else None\n")
    namespace: dict[str, Any] = {"_env": env, **_PLAIN_HELPERS, **compiler.literals}
    exec(compile(code, "<flan-builder plain template>", "exec"), namespace)  # noqa: S102
    return namespace["_render"]


class MissingKeyError(jinja2.UndefinedError):
    """A spec expression looked up a key its mapping lacks (not a missing field)."""


class _CompiledTemplate:
    def __init__(self, env: SandboxedEnvironment, spec: TaskSpec, template: TemplateSpec) -> None:
        self.spec = template
        where = f"{spec.path}:{template.line} (task {spec.name}, template {template.id}"
        target = template.target
        if target is None:
            if template.inverted:
                raise FlanError(f"{where}): an inverted template needs a 'target'")
            target = "{{ correct_choice }}" if spec.has_options else "{{ references[0] }}"
        self._target_source = target
        try:
            self.joint = env.from_string(template.input + _JOINT + target)
        except jinja2.TemplateSyntaxError:
            # Compile the parts alone to say which one is broken and on which of its lines.
            for part, source in (("input", template.input), ("target", target)):
                try:
                    env.from_string(source)
                except jinja2.TemplateSyntaxError as exc:
                    start = template.part_lines.get(part)
                    file_line = start + exc.lineno - 1 if start else template.line
                    raise FlanError(f"{spec.path}:{file_line} (task {spec.name}, template "
                                    f"{template.id}, line {exc.lineno} of its {part}): "
                                    f"template syntax error: {exc.message}") from None
            raise FlanError(f"{where}): template syntax error across input and target "
                            "(a block opened in one and closed in the other?)") from None
        try:
            self.options = (
                _Expression(env, template.options) if isinstance(template.options, str) else None
            )
            self.answer = _Expression(env, template.answer) if template.answer else None
            self.references = (
                _Expression(env, template.references) if template.references else None
            )
        except jinja2.TemplateSyntaxError as exc:
            raise FlanError(f"{where}): syntax error in its options/answer/references "
                            f"expression: {exc.message}") from None
        self.static_options = (
            list(template.options) if isinstance(template.options, tuple) else None
        )
        self._env = env
        self._can_run_long = can_run_long(env, template.input + _JOINT + target)
        self._join = _join_bounded if self._can_run_long else _join_capped
        self._plain = _plain_renderer(env, template.input + _JOINT + target)
        self.id = template.id
        self.inverted = template.inverted
        # the template overrides the task's options, answer or references: a context of its own
        self.needs_own_context = (self.options is not None or self.static_options is not None
                                  or self.answer is not None or self.references is not None)

    def render_pair(self, ctx: dict[str, Any]) -> tuple[str, str]:
        """Input and target in one pass over a shared context (which already holds the globals).

        ``Template.render`` copies the context and merges the globals on every call, which
        costs more than rendering these short templates does.
        """
        if self._plain is not None:
            text = self._plain(ctx)
            if text is not None:
                parts = text.split(_JOINT)
                if len(parts) == 2:
                    return parts[0], parts[1]
        joint = self.joint
        parts = self._join(joint.root_render_func(Context(self._env, ctx, joint.name, joint.blocks))
                           ).split(_JOINT)
        if len(parts) != 2:  # the row's own text holds the joint marker: render separately
            return (render_bounded(self._env.from_string(self.spec.input), ctx),
                    render_bounded(self._env.from_string(self._target_source), ctx))
        return parts[0], parts[1]



class TaskRenderer:
    """Renders one task's rows with its templates; everything is compiled on construction."""

    def __init__(
        self,
        spec: TaskSpec,
        env: SandboxedEnvironment | None = None,
        *,
        with_options: bool = True,
        separator: str = DEFAULT_SEPARATOR,
    ) -> None:
        self.spec = spec
        self.env = env or make_environment()
        self.with_options = with_options
        self.separator = separator
        where = f"{spec.path} (task {spec.name})"
        try:
            self.options = _Expression(self.env, spec.options) if isinstance(spec.options, str) else None
            self.static_options = list(spec.options) if isinstance(spec.options, tuple) else None
            self.answer = _Expression(self.env, spec.answer) if spec.answer else None
            self.references = _Expression(self.env, spec.references) if spec.references else None
        except jinja2.TemplateSyntaxError as exc:
            raise FlanError(f"{where}: syntax error in an options/answer/references expression: "
                            f"{exc.message}") from None
        self.templates = [_CompiledTemplate(self.env, spec, t) for t in spec.templates]
        # range, dict, ... (render_pair bypasses the env's globals) and the spec's constants
        self.globals = {**self.env.globals, **spec.constants}
        self.template_ids = [t.id for t in spec.templates]
        self._has_options = spec.has_options
        self._generation = spec.type == "generation"

    # -- context ---------------------------------------------------------------------------

    def _choices(self, ctx: dict[str, Any], compiled: _CompiledTemplate | None) -> tuple[list[str], int]:
        options_expr = compiled.options if compiled and compiled.options else self.options
        static = compiled.static_options if compiled and compiled.static_options else None
        if static is None and options_expr is None:
            static = self.static_options
        if static is not None:
            options = static
        else:
            assert options_expr is not None
            value = options_expr(ctx)
            if not isinstance(value, (list, tuple)) or not value:
                raise _RowProblem(f"options expression {options_expr.source!r} gave {value!r}, "
                                  "not a non-empty list; fix 'options' in the spec")
            # data has stray spaces (piqa)
            options = [_bounded_str(v, "an option").strip() for v in value]
        answer_expr = compiled.answer if compiled and compiled.answer else self.answer
        assert answer_expr is not None
        raw = answer_expr(ctx)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise _RowProblem(f"answer expression {answer_expr.source!r} gave {raw!r}, not an option "
                              "index; fix 'answer' in the spec or the row")
        if not 0 <= raw < len(options):
            raise _RowProblem(f"label out of range: answer index {raw} but only {len(options)} options "
                              f"{options}; fix the row's label or the spec's options")
        return options, raw

    def _references(self, ctx: dict[str, Any], compiled: _CompiledTemplate | None) -> list[str]:
        expr = (compiled.references if compiled else None) or self.references
        if expr is None:
            return [ctx["correct_choice"]] if "correct_choice" in ctx else []
        value = expr(ctx)
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise _RowProblem(f"references expression {expr.source!r} gave "
                              f"{type(value).__name__}, not a list of strings")
        texts = [_bounded_str(v, "a reference") for v in value]
        refs = [text for text in texts if text.strip()]
        if not refs and self._generation:
            raise _RowProblem(f"the row has no reference answer ({expr.source!r} is empty); drop the "
                              "row or fix the spec")
        return refs

    def _context(self, row: Mapping[str, Any], compiled: _CompiledTemplate | None) -> dict[str, Any]:
        ctx: dict[str, Any] = {**self.globals, **row}
        ctx["row"] = row
        ctx[_LOOP_GUARD] = _bounded_loop  # a row's own field of that name must not replace it
        if self._has_options:
            options, index = self._choices(ctx, compiled)
            ctx["answer_choices"] = options
            ctx["correct_index"] = index
            ctx["correct_choice"] = options[index]
        elif self.references is not None:
            ctx["references"] = self._references(ctx, compiled)
        return ctx

    def context(
        self, row: Mapping[str, Any], compiled: _CompiledTemplate | None = None, where: str = ""
    ) -> dict[str, Any]:
        """The names a template sees: the row's fields, ``row`` itself, and the answer choices."""
        try:
            return self._context(row, compiled)
        except _RowProblem as exc:
            raise TemplateRenderError(f"{where or f'task {self.spec.name}'}: {exc}") from None
        except (jinja2.TemplateError, *_TEMPLATE_FAULTS) as exc:
            raise _render_error(exc, where or f"task {self.spec.name}", row,
                                f"the spec in {self.spec.path}") from None

    # -- rendering -------------------------------------------------------------------------

    def render_rows(
        self, rows: Sequence[Mapping[str, Any]], templates: Sequence[Sequence[int]], *,
        split: str = "?", row_indices: Sequence[int] | None = None,
    ) -> list[RenderedExample]:
        """Render ``rows[k]`` with each template in ``templates[k]``, row by row: the batch API.

        A row's context is built once for all of its templates that share it. ``row_indices`` name
        the rows in error messages (default: their place in ``rows``).
        """
        compiled_templates = self.templates
        render_on = self._render_on
        examples: list[RenderedExample] = []
        append = examples.append
        # The examples are kept, so every few hundred of them would start a collection that walks
        # every object the process holds (a third of the batch's time in bench/build.py); rendering
        # makes no reference cycles, so the collector waits for the end of the batch.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for k, (row, chosen) in enumerate(zip(rows, templates, strict=True)):
                row_index = row_indices[k] if row_indices is not None else k
                shared: dict[str, Any] | None = None
                for template_index in chosen:
                    compiled = compiled_templates[template_index]
                    if compiled.needs_own_context:
                        ctx = self._row_context(row, compiled, compiled, split, row_index)
                    else:
                        if shared is None:
                            shared = self._row_context(row, None, compiled, split, row_index)
                        ctx = shared
                    append(render_on(row, compiled, ctx, split, row_index))
        finally:
            if collecting:
                gc.enable()
        return examples

    def render(
        self, row: Mapping[str, Any], template_index: int, *, split: str = "?", row_index: int = -1,
    ) -> RenderedExample:
        """Render ``row`` with one template."""
        compiled = self.templates[template_index]
        ctx = self._row_context(row, compiled if compiled.needs_own_context else None, compiled, split,
                                row_index)
        return self._render_on(row, compiled, ctx, split, row_index)

    def render_all(
        self, row: Mapping[str, Any], template_indices: list[int], *, split: str = "?",
        row_index: int = -1,
    ) -> list[RenderedExample]:
        """Render one row with several templates, building the shared context once."""
        return self.render_rows((row,), (template_indices,), split=split, row_indices=(row_index,))

    def _where(self, compiled: _CompiledTemplate, split: str, row_index: int) -> str:
        return f"task {self.spec.name}, template {compiled.id}, {split} row {row_index}"

    def _row_context(self, row: Mapping[str, Any], own: _CompiledTemplate | None,
                     compiled: _CompiledTemplate, split: str, row_index: int) -> dict[str, Any]:
        """``_context(row, own)``; a failure names ``compiled``, the template being rendered."""
        try:
            return self._context(row, own)
        except _RowProblem as exc:
            raise TemplateRenderError(f"{self._where(compiled, split, row_index)}: {exc}") from None
        except (jinja2.TemplateError, *_TEMPLATE_FAULTS) as exc:
            raise _render_error(exc, self._where(compiled, split, row_index), row,
                                f"the spec in {self.spec.path}") from None

    def _render_on(self, row: Mapping[str, Any], compiled: _CompiledTemplate, ctx: dict[str, Any],
                   split: str, row_index: int) -> RenderedExample:
        """One example: the template rendered on the row's context, with its options and answers."""
        try:
            text, target = compiled.render_pair(ctx)
            text, target = text.strip(), target.strip()
            if compiled.inverted:
                options, answer_index, references = [], -1, [target]
            elif self._has_options:
                options = ctx["answer_choices"]
                answer_index = ctx["correct_index"]
                references = self._references(ctx, compiled)
            else:
                options, answer_index, references = [], -1, ctx["references"]
        except _RowProblem as exc:
            raise TemplateRenderError(f"{self._where(compiled, split, row_index)}: {exc}") from None
        except (jinja2.TemplateError, *_TEMPLATE_FAULTS) as exc:
            raise _render_error(exc, self._where(compiled, split, row_index), row,
                                f"the template in {self.spec.path}") from None
        if not text:
            raise TemplateRenderError(f"{self._where(compiled, split, row_index)}: the rendered input "
                                      "is empty")
        if not target:
            raise TemplateRenderError(f"{self._where(compiled, split, row_index)}: the rendered target "
                                      "is empty")
        prompt = text + options_suffix(options) if (options and self.with_options) else text
        return _example(compiled.id, compiled.inverted, text, prompt, target, self.separator + target,
                        options, answer_index, references)
