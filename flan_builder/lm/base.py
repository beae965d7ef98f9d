"""The one language-model interface: everything that scores or generates text calls this.

In the spirit of lm-evaluation-harness's ``LM`` class: a model answers two kinds of request,
``loglikelihood`` (how likely is this continuation after this context?) and ``generate``
(continue this prompt). The evaluator, ``flan lift``, ``flan generate`` and a data-writing
teacher all call these two methods; how a backend computes them (a transformers model with
a shared-prefix cache, three models combined by proxy-tuning, an OpenAI-compatible server)
stays behind them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LoglikelihoodRequest:
    """Score ``continuation`` after ``context`` (lm-eval's request). Only the continuation's own
    tokens are scored; a separator belongs at the end of the context."""

    context: str
    continuation: str
    # Requests with the same group (one held-out row, with and without OPTIONS) are scored together
    # where the backend can share their common prefix; None: grouped by context alone.
    group: Any = None


@dataclass(frozen=True)
class GenerationRequest:
    """Continue ``prompt``: greedy when ``temperature`` is 0, else sampled (with ``top_p``)."""

    prompt: str
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ()  # the answer ends before the first of these
    temperature: float = 0.0
    top_p: float = 1.0
    # True: the prompt is a user's chat message. A local model wraps it in its chat template;
    # an OpenAI-compatible server gets it through the chat-completions endpoint.
    chat: bool = False

    @property
    def sampling_key(self) -> tuple[Any, ...]:
        """Requests with the same key can share one batched ``generate`` call."""
        return self.max_new_tokens, self.stop, self.temperature, self.top_p, self.chat


class LM(ABC):
    """A language model behind the two requests; ``info`` describes it for reports."""

    def __init__(self, name: str, info: dict[str, Any] | None = None) -> None:
        self.name = name
        self.info: dict[str, Any] = {"name": name, **(info or {})}
        # What generation has cost so far (a teacher's budget and report read it).
        self.usage: dict[str, int] = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}

    @abstractmethod
    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[float]:
        """Summed log-probability of each continuation given its context, in request order."""

    @abstractmethod
    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        """Each prompt's continuation (stripped, cut at its first stop string), in request order."""

    def continuation_tokens(self, requests: list[LoglikelihoodRequest]) -> list[list[str]] | None:
        """The tokens each request's log-likelihood sums over (for logged samples); None if unknown."""
        return None

    def close(self) -> None:  # noqa: B027 - optional: most backends hold nothing to free
        """Free what the model holds (weights, connections); the object is not used afterwards."""


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The text before the earliest stop string (generation may run past it by a few tokens)."""
    ends = [text.find(s) for s in stop if s and s in text]
    return text[: min(ends)] if ends else text
