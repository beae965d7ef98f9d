"""Near-copy filter: a new example is dropped when its ROUGE-L F1 against the seed or any kept
synthetic example exceeds the threshold (LLM2LLM's rule; Google's ``rouge-score`` package).
"""

from __future__ import annotations

from typing import Any


class RougeDeduper:
    """Remembers every text kept so far; ``check`` says whether a new one is too close to any."""

    def __init__(self, threshold: float, texts: list[str] | None = None) -> None:
        from rouge_score import rouge_scorer

        self.threshold = threshold
        self.scorer = rouge_scorer.RougeScorer(["rougeL"])
        self.kept: list[str] = list(texts or [])

    def closest(self, text: str) -> float:
        """The highest ROUGE-L F1 of ``text`` against the kept texts (0 when none)."""
        best = 0.0
        for kept in self.kept:
            best = max(best, self.scorer.score(kept, text)["rougeL"].fmeasure)
            if best > self.threshold:
                break  # already a near-copy
        return best

    def check(self, text: str) -> tuple[bool, float]:
        """(keep?, closest F1); a kept text is remembered for the next checks."""
        score = self.closest(text)
        keep = score <= self.threshold
        if keep:
            self.kept.append(text)
        return keep, score


def example_text(row: dict[str, Any], inputs: tuple[str, ...]) -> str:
    """What two examples are compared on: their input fields (the answer is shared by design)."""
    return "\n".join(str(row.get(name) or "") for name in inputs)
