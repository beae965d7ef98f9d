"""Answers read out of chain-of-thought generations, and exact match on them (torch-free).

A CoT target ends in a sentence that names the answer: FLAN v2's "Therefore, the answer is X."
and its variants ("So the final answer is X.", "The answer: X.", "Final answer: X."), Kojima et
al.'s "the answer (arabic numerals) is X"; GSM8K's own solutions end in "#### X". The answer is
read after the *first* such marker, up to the end of its line or sentence: a model that goes on
to write another question and answer is still read at its own answer.

How the answer is compared with a reference:

- a number ("72", "1,080": GSM8K, cot_gsm8k) with the first number of the answer, as numbers
  ("$1,080.00" matches "1080");
- an option letter ("(C)": AQuA, QASC) with the letter the answer starts with ("C", "(c) 1120");
- anything else ("yes", "Sentence A", "bloody mess") as text, lower-cased, punctuation and
  repeated spaces dropped.

A generation with no marker, or whose answer is not in the reference's form (no number for a
number, no letter for a letter), is unparsable: it counts as wrong, stays in the denominator,
and is reported as a count beside the score.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

from flan_builder.evaluation.numbers import parse_number

# "answer is", "answer:", "answer (arabic numerals) is", "answer is:"; "isn't" is not a marker
MARKER = re.compile(r"\banswer\b(?:\s*\([^)\n]{0,40}\))?\s*(?:\bis\b\s*:?|:)|####", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_LETTER_REFERENCE = re.compile(r"\(([A-Za-z])\)")
_LETTER_ANSWER = re.compile(r"\(?([A-Za-z])\)?(?=$|[\s.,:;!?])")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def extract_answer(text: str) -> str | None:
    """The answer after the first answer marker, to the end of its line or sentence; None if none."""
    match = MARKER.search(text)
    if match is None:
        return None
    rest = text[match.end():].lstrip()
    line = rest.split("\n", 1)[0]
    end = _SENTENCE_END.search(line)
    answer = (line[: end.start()] if end else line).strip().strip("\"'*` ").rstrip(".")
    return answer or None


def reference_number(reference: str) -> float | None:
    """The reference as a number when it is one ('72', '1,080', '$5', '-3.5'), else None."""
    text = reference.strip().replace(",", "").lstrip("$").rstrip("%").strip()
    return float(text) if _NUMBER.fullmatch(text) else None


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, one space between words."""
    return " ".join(text.lower().translate(_PUNCTUATION).split())


def judge(answer: str | None, reference: str) -> bool | None:
    """Whether a read answer matches ``reference``; None when it is not of the reference's kind."""
    if answer is None:
        return None
    number = reference_number(reference)
    if number is not None:
        found = parse_number(answer)
        if found is None:
            return None
        return math.isclose(found, number, rel_tol=1e-9, abs_tol=1e-9)
    letter = _LETTER_REFERENCE.fullmatch(reference.strip())
    if letter is not None:
        said = _LETTER_ANSWER.match(answer)
        return None if said is None else said.group(1).lower() == letter.group(1).lower()
    return normalize(answer) == normalize(reference)


def read_answer(generation: str, references: Sequence[str]) -> tuple[str | None, bool | None]:
    """(the answer read from ``generation``, whether it matches a reference; None: unparsable)."""
    answer = extract_answer(generation)
    verdicts = [judge(answer, str(reference)) for reference in references]
    if any(verdicts):
        return answer, True
    if all(v is None for v in verdicts):
        return answer, None
    return answer, False


def score_answers(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """exact_match (0-100) over every row, unparsable ones counted as wrong; and their count."""
    verdicts = [read_answer(p, r)[1] for p, r in zip(predictions, references, strict=True)]
    n = max(len(verdicts), 1)
    return {"exact_match": 100 * sum(v is True for v in verdicts) / n,
            "unparsable": sum(v is None for v in verdicts)}
