"""Cross-dataset contamination: held-out rows whose text also sits in training rows.

Holding out a cluster does not keep its text out of training when two datasets share a
source: WNLI (nli) is made from the Winograd schemas that SuperGLUE WSC (coreference) also
uses. The rule is that of GPT-3's and FLAN's contamination analyses: lower-case, split into
words (punctuation is not a word), and a held-out row overlaps a training row when one of
its fields' 13-grams -- or the whole field, when it has fewer than 13 words -- occurs in a
text field of the training row. A field of fewer than ``MIN_WORDS`` words (a name, a
pronoun, a label) is not checked alone: it would match almost every row (GPT-3 never lets
its n fall below 8 for the same reason).

The held-out side is small, so its n-grams are indexed as hashes. Training rows are checked as
the mixture draws them, each distinct row once: with ``drop`` the overlapping rows leave the
task's pool and the mixture draws again, checking only rows it has not seen, so the cost follows
the training split's size, not the datasets' (FLAN draws 3,000 of up to 30,000 rows each).
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from flan_builder.errors import FlanError

NGRAM = 13
MIN_WORDS = 8
MODES = ("drop", "report", "fail")
DEFAULT_MODE = "drop"
_WORD = re.compile(r"\w+")
_CHUNK = 10_000  # training rows tokenised together (one regex call, one numpy pass)

Owner = tuple[str, int]  # (held-out task, source row index)


def words(text: str) -> list[str]:
    """Lower-cased words, punctuation dropped: 'The trophy , it' == 'the Trophy, it'."""
    return _WORD.findall(text.lower())


def field_texts(value: Any) -> Iterator[str]:
    """The strings inside a field's value (lists of answers, dialogue turns, nested dicts)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, str):
                yield item
            else:
                yield from field_texts(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from field_texts(item)


def _ngrams(tokens: Sequence[str], n: int) -> Iterator[tuple[str, ...]]:
    return zip(*(tokens[i:] for i in range(n)), strict=False)


def heldout_grams(row: dict[str, Any], fields: Sequence[str]) -> set[tuple[str, ...]]:
    """What a held-out row is checked by: each field's 13-grams, or the whole field when shorter."""
    grams: set[tuple[str, ...]] = set()
    for name in fields:
        for text in field_texts(row.get(name)):
            tokens = words(text)
            if len(tokens) >= NGRAM:
                grams.update(_ngrams(tokens, NGRAM))
            elif len(tokens) >= MIN_WORDS:
                grams.add(tuple(tokens))
    return grams


# An n-gram's key: the words' hashes mixed as a polynomial mod 2**64 (FNV's prime), so numpy can
# compute the key of every n-gram of a long token array with n multiply-adds.
_PRIME = 1099511628211
_MASK = (1 << 64) - 1
_BITMAP_BITS = 20  # a 1 MiB first filter that stays in cache; np.isin settles what passes it
# Joins a chunk's texts so that one regex call splits them all; a word no text should hold (if
# one does, the chunk is split text by text instead).
_SEPARATOR = "flanbuilderxtextxboundary"


def gram_key(gram: Sequence[str]) -> int:
    """The key of one n-gram (the same number the vectorised scan computes)."""
    key = 0
    for word in gram:
        key = (key * _PRIME + hash(word)) & _MASK
    return key


class HeldoutIndex:
    """Keys of every held-out row's n-grams, each pointing back to the rows that hold it."""

    def __init__(self) -> None:
        self._owners: dict[int, list[Owner]] = defaultdict(list)
        self._rows: dict[Owner, tuple[dict[str, Any], Sequence[str]]] = {}
        self._exact: dict[Owner, set[tuple[str, ...]]] = {}  # filled for rows that get a hit
        self._keys: dict[int, set[int]] = defaultdict(set)  # n -> keys of the held-out n-grams
        self._arrays: tuple[Any, dict[int, Any]] | None = None  # bitmap, sorted keys per length

    @property
    def lengths(self) -> list[int]:
        return sorted(self._keys)

    def add(self, task: str, index: int, row: dict[str, Any], fields: Sequence[str]) -> None:
        owner = (task, index)
        grams = heldout_grams(row, fields)
        if not grams:
            return
        self._rows[owner] = (row, fields)
        for gram in grams:
            key = gram_key(gram)
            self._owners[key].append(owner)
            self._keys[len(gram)].add(key)
        self._arrays = None

    def matches(self, row: dict[str, Any], fields: Sequence[str]) -> set[Owner]:
        """The held-out rows that share an n-gram with this (training) row, checked word by word."""
        found: set[Owner] = set()
        for name in fields:
            for text in field_texts(row.get(name)):
                tokens = words(text)
                for n in self._keys:
                    for gram in set(_ngrams(tokens, n)):
                        for owner in self._owners.get(gram_key(gram), ()):
                            if gram in self._exact_grams(owner):  # a key collision is no hit
                                found.add(owner)
        return found

    def candidates(self, rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> set[int]:
        """Positions in ``rows`` that may hold a held-out n-gram (a superset: check with ``matches``)."""
        import numpy as np

        texts: list[str] = []
        text_row: list[int] = []
        for position, row in enumerate(rows):
            for name in fields:
                value = row.get(name)
                if isinstance(value, str):  # most fields: skip the generator
                    texts.append(value)
                    text_row.append(position)
                elif isinstance(value, (list, tuple, dict)):
                    found = list(field_texts(value))
                    texts.extend(found)
                    text_row.extend([position] * len(found))
        if not texts or not self._keys:
            return set()
        tokens = _WORD.findall(f" {_SEPARATOR} ".join(texts).lower())
        hashes = np.fromiter(map(hash, tokens), dtype=np.int64, count=len(tokens)).view(np.uint64)
        starts = np.flatnonzero(hashes == np.int64(hash(_SEPARATOR)).view(np.uint64)) + 1
        if len(starts) != len(texts) - 1:  # some text holds the separator word: split one by one
            split = [words(text) for text in texts]
            tokens = [token for text_tokens in split for token in text_tokens]
            hashes = np.fromiter(map(hash, tokens), dtype=np.int64, count=len(tokens)).view(np.uint64)
            starts = np.cumsum([len(t) for t in split])[:-1]
        starts = np.concatenate(([0], starts))
        bitmap, keys = self._key_arrays()
        low = np.uint64((1 << _BITMAP_BITS) - 1)
        found: set[int] = set()
        rolling = hashes
        for n in range(2, max(self._keys) + 1):
            rolling = rolling[:-1] * np.uint64(_PRIME) + hashes[n - 1:]
            if n not in keys or not len(rolling):
                continue
            maybe = np.flatnonzero(bitmap[rolling & low])
            hits = maybe[np.isin(rolling[maybe], keys[n])]
            # an n-gram across two texts is found here and refused by ``matches``
            found.update(text_row[t] for t in np.searchsorted(starts, hits, side="right") - 1)
        return found

    def _key_arrays(self) -> tuple[Any, dict[int, Any]]:
        import numpy as np

        if self._arrays is None:
            keys = {n: np.array(sorted(k), dtype=np.uint64) for n, k in self._keys.items()}
            bitmap = np.zeros(1 << _BITMAP_BITS, dtype=bool)
            for array in keys.values():
                bitmap[array & np.uint64((1 << _BITMAP_BITS) - 1)] = True
            self._arrays = (bitmap, keys)
        return self._arrays

    def _exact_grams(self, owner: Owner) -> set[tuple[str, ...]]:
        if owner not in self._exact:
            self._exact[owner] = heldout_grams(*self._rows[owner])
        return self._exact[owner]


class _Seen:
    """Source row indices already checked, a byte each (a set of ints costs ~60 bytes a row, which a
    build of millions of rows keeps to its end)."""

    def __init__(self) -> None:
        self._flags = bytearray()
        self._count = 0

    def __contains__(self, index: int) -> bool:
        return 0 <= index < len(self._flags) and self._flags[index] == 1

    def __len__(self) -> int:
        return self._count

    def update(self, indices: Iterable[int]) -> None:
        for index in indices:
            if index >= len(self._flags):
                self._flags.extend(bytes(max(index + 1, 2 * len(self._flags)) - len(self._flags)))
            if not self._flags[index]:
                self._flags[index] = 1
                self._count += 1


@dataclass
class HeldoutFinding:
    """What the check found for one held-out dataset."""

    rows_checked: int
    overlapping: set[int] = field(default_factory=set)  # held-out row indices
    heldout_rows_by_task: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    train_rows_by_task: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))


class ContaminationCheck:
    """Held-out rows indexed once; training rows scanned as they are drawn, each row once."""

    def __init__(
        self, heldout: Iterable[tuple[str, Sequence[str], Sequence[int], Sequence[dict[str, Any]]]],
        mode: str = DEFAULT_MODE,
    ) -> None:
        """``heldout``: (task, fields, source row indices, rows) of each held-out dataset."""
        if mode not in MODES:
            raise FlanError(f"--contamination must be one of {', '.join(MODES)} (got {mode!r})")
        started = time.perf_counter()
        self.mode = mode
        self.index = HeldoutIndex()
        self.findings: dict[str, HeldoutFinding] = {}
        for task, fields, indices, rows in heldout:
            self.findings[task] = HeldoutFinding(rows_checked=len(indices))
            for source_index, row in zip(indices, rows, strict=True):
                self.index.add(task, source_index, row, fields)
        self._checked: dict[str, _Seen] = defaultdict(_Seen)
        self.seconds = time.perf_counter() - started

    @property
    def found(self) -> bool:
        return any(f.overlapping for f in self.findings.values())

    @property
    def train_rows_checked(self) -> int:
        return sum(len(rows) for rows in self._checked.values())

    def scan(self, task: str, fields: Sequence[str], indices: Sequence[int],
             rows: Sequence[dict[str, Any]]) -> set[int]:
        """Check a training task's rows not checked before; the source indices that overlap."""
        by_index: dict[int, dict[str, Any]] = {}
        for source_index, row in zip(indices, rows, strict=True):
            by_index.setdefault(source_index, row)
        return self.scan_rows(task, fields, list(by_index), lambda chosen: [by_index[i] for i in chosen])

    def scan_rows(self, task: str, fields: Sequence[str], indices: Iterable[int],
                  take: Callable[[list[int]], list[dict[str, Any]]]) -> set[int]:
        """``scan`` with the rows read by ``take(indices)`` as they are checked, ``_CHUNK`` at a time:
        a training split is never held parsed whole (and not read at all when nothing is held out)."""
        started = time.perf_counter()
        checked = self._checked[task]
        order = [i for i in dict.fromkeys(indices) if i not in checked]
        checked.update(order)
        overlapping: set[int] = set()
        if not self.index.lengths:  # nothing held out
            return overlapping
        for start in range(0, len(order), _CHUNK):
            chunk = take(order[start:start + _CHUNK])
            for position in self.index.candidates(chunk, fields):
                for heldout_task, heldout_index in self.index.matches(chunk[position], fields):
                    finding = self.findings[heldout_task]
                    finding.overlapping.add(heldout_index)
                    finding.heldout_rows_by_task[task].add(heldout_index)
                    finding.train_rows_by_task[task].add(order[start + position])
                    overlapping.add(order[start + position])
        self.seconds += time.perf_counter() - started
        return overlapping

    def overlapping_train_rows(self) -> dict[str, set[int]]:
        """Training task -> source row indices that overlap some held-out row."""
        rows: dict[str, set[int]] = defaultdict(set)
        for finding in self.findings.values():
            for task, indices in finding.train_rows_by_task.items():
                rows[task] |= indices
        return dict(rows)

    def fail_message(self) -> str:
        """One line naming the first contaminated held-out dataset, its count and training task."""
        dirty = [(name, f) for name, f in self.findings.items() if f.overlapping]
        name, finding = dirty[0]
        tasks = sorted(finding.train_rows_by_task, key=lambda t: (-len(finding.heldout_rows_by_task[t]), t))
        train_rows = sum(len(finding.train_rows_by_task[t]) for t in tasks)
        more = f" (and {len(dirty) - 1} more held-out dataset(s))" if len(dirty) > 1 else ""
        return (f"held-out {name}: {len(finding.overlapping)} of {finding.rows_checked} rows share "
                f"text ({NGRAM}-grams) with training task {', '.join(tasks)} ({train_rows} training "
                f"rows){more}; rerun with --contamination drop to remove those training rows, or "
                "--contamination report to keep them")

    def to_json(self, declared: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """The manifest's record; ``declared``: training task -> held-out tasks it shares a source with."""
        declared = declared or {}
        dropping = self.mode == "drop"
        overlapping = {task: len(rows) for task, rows in sorted(self.overlapping_train_rows().items())}
        return {
            "rule": f"{NGRAM}-grams of each held-out field (the whole field when it has "
                    f"{MIN_WORDS}-{NGRAM - 1} words), lower-cased, punctuation dropped, "
                    "found in the source fields of a training row that the mixture drew",
            "ngram": NGRAM,
            "min_words": MIN_WORDS,
            "mode": self.mode,
            "training_rows_checked": self.train_rows_checked,
            "heldout": {
                name: {
                    "rows_checked": f.rows_checked,
                    "rows_overlapping": len(f.overlapping),
                    "training_tasks": {
                        task: {"heldout_rows": len(f.heldout_rows_by_task[task]),
                               "training_rows": len(f.train_rows_by_task[task]),
                               "declared": name in declared.get(task, ())}
                        for task in sorted(f.train_rows_by_task)
                    },
                    "training_rows_dropped": sum(len(v) for v in f.train_rows_by_task.values())
                    if dropping else 0,
                }
                for name, f in self.findings.items()
            },
            "training_rows_overlapping": overlapping,
            "training_rows_dropped": overlapping if dropping else {},
            "seconds": round(self.seconds, 2),
        }


def summary_line(record: dict[str, Any]) -> str | None:
    """One line for ``flan build`` from the manifest's record (None without a held-out split)."""
    heldout = record.get("heldout") or {}
    if not heldout:
        return None
    checked = sum(h["rows_checked"] for h in heldout.values())
    overlapping = sum(h["rows_overlapping"] for h in heldout.values())
    head = f"contamination ({record['ngram']}-grams, {record['mode']}): "
    if not overlapping:
        return head + f"none of {checked:,} held-out rows overlap training"
    parts = [f"{name} {h['rows_overlapping']}/{h['rows_checked']} ({', '.join(h['training_tasks'])})"
             for name, h in heldout.items() if h["rows_overlapping"]]
    if record["mode"] == "drop":
        rows = sum(record["training_rows_dropped"].values())
        tail = f"{rows:,} training row{'s' if rows != 1 else ''} dropped"
    else:
        rows = sum(record["training_rows_overlapping"].values())
        tail = f"{rows:,} overlapping training row{'s' if rows != 1 else ''} kept"
    return head + f"{overlapping:,} of {checked:,} held-out rows overlap training: {'; '.join(parts)}; {tail}"
