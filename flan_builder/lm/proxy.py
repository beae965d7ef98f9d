"""Proxy-tuning (Liu et al. 2024): steer a base model at decoding time with a tuned expert.

At every position the next-token logits are ``s_M + alpha * (s_E - s_A)``: M the base, E the
tuned expert, A the expert before tuning (the anti-expert); then softmax. alpha = 0 is the
base alone, alpha = 1 the paper's setting. Softmax ignores a constant added to a row, so the
same distribution comes out whether raw logits or log-probabilities are combined.

Two levels:

- ``token`` (the paper): the three models must share a tokenizer. Generation runs the base's
  own ``generate`` with ``ProxyLogitsProcessor``, which owns the expert and anti-expert and
  their key/value caches (the pattern of transformers' classifier-free-guidance processor),
  so greedy, sampling, stop strings and beam search all keep working. Scoring combines the
  three models' logits at every scored option position (shared-prefix cache for each).
- ``sequence`` (beyond the paper, scoring only): each model scores an option in its own
  tokenization and the sums are combined, ``LL_M + alpha * (LL_E - LL_A)``; the base may
  then use another tokenizer than the expert pair. There is no next-token distribution to
  sample from, so it does not generate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, LogitsProcessor

from flan_builder.errors import FlanError
from flan_builder.lm.base import LM, GenerationRequest, LoglikelihoodRequest
from flan_builder.lm.hf import HFLM
from flan_builder.lm.scoring import cache_keyword

LEVELS = ("token", "sequence")


@dataclass(frozen=True)
class ProxySpec:
    """A proxy-tuned model: base + alpha * (expert - anti), at token or sequence level."""

    base: str
    expert: str
    anti: str
    alpha: float = 1.0
    level: str = "token"

    @property
    def name(self) -> str:
        level = "" if self.level == "token" else f", {self.level} level"
        return f"proxy[{self.base} + {self.alpha:g} x ({self.expert} - {self.anti}){level}]"

    def check(self) -> None:
        """Bad settings are one-line errors before anything loads."""
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
                or self.alpha != self.alpha or self.alpha < 0:
            raise FlanError(f"proxy-tuning alpha must be a number >= 0 (0 = the base alone, 1 = the "
                            f"paper), got {self.alpha!r}")
        if self.level not in LEVELS:
            raise FlanError(f"--proxy-level must be one of {', '.join(LEVELS)}, got {self.level!r}")


def _vocabulary_difference(a: Any, b: Any) -> str | None:
    """Why two tokenizers cannot share token-level arithmetic, or None when they can."""
    vocab_a, vocab_b = a.get_vocab(), b.get_vocab()
    if vocab_a != vocab_b:
        only_a = len(vocab_a.keys() - vocab_b.keys())
        moved = sum(1 for t, i in vocab_a.items() if t in vocab_b and vocab_b[t] != i)
        return f"vocabularies differ ({len(vocab_a):,} vs {len(vocab_b):,} tokens, {only_a:,} only in " \
               f"the first, {moved:,} with other ids)"
    for attr in ("bos_token_id", "eos_token_id", "unk_token_id"):
        if getattr(a, attr, None) != getattr(b, attr, None):
            return f"{attr} differs ({getattr(a, attr, None)} vs {getattr(b, attr, None)})"
    return None


def require_same_tokenizer(base_name: str, base: Any, other_name: str, other: Any) -> None:
    """Token-level arithmetic needs one tokenizer; otherwise an error naming both models."""
    why = _vocabulary_difference(base, other)
    if why:
        raise FlanError(f"token-level proxy-tuning needs one tokenizer, but {other_name} and {base_name} "
                        f"differ: {why}; use --proxy-level sequence to steer a base with another "
                        "tokenizer when scoring options")


def shared_width(base: HFLM, others: list[HFLM]) -> int:
    """Logit columns the models share; only padding rows past the tokenizer may differ."""
    for other in others:
        require_same_tokenizer(base.name, base.tokenizer, other.name, other.tokenizer)
    widths = {m.name: m.model.get_output_embeddings().weight.shape[0] for m in [base, *others]}
    needed = len(base.tokenizer)
    short = [name for name, width in widths.items() if width < needed]
    if short:
        raise FlanError(f"{short[0]} has {widths[short[0]]:,} output rows for a {needed:,}-token "
                        "tokenizer; it cannot score every token")
    return min(widths.values())


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids as ``generate`` makes them under left padding (padding positions read 1)."""
    positions = mask.long().cumsum(-1) - 1
    return positions.masked_fill(mask == 0, 1)


class ProxyLogitsProcessor(LogitsProcessor):
    """Adds alpha * (expert - anti-expert) to the base's next-token logits inside ``generate``.

    It owns both helper models' key/value caches and feeds them only the tokens they have not
    seen; when ``generate`` reorders rows (beam search) it finds each row's previous prefix
    and reorders the caches to match.
    """

    def __init__(self, expert: Any, anti: Any, alpha: float, attention_mask: torch.Tensor,
                 width: int) -> None:
        self.models = (expert, anti)
        self.alpha, self.width = float(alpha), width
        self.prompt_mask = attention_mask
        self.caches: list[Any] = [None, None]
        self.seen: torch.Tensor | None = None  # the input ids the caches hold

    def _sync(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The attention mask for ``input_ids``; reorders the caches if rows were reordered."""
        if self.seen is None:
            mask = self.prompt_mask.to(input_ids.device)
            if mask.shape[0] != input_ids.shape[0]:  # beams expand each prompt
                mask = mask.repeat_interleave(input_ids.shape[0] // mask.shape[0], dim=0)
            self.prompt_mask = mask
            return mask
        n = self.seen.shape[1]
        if not torch.equal(input_ids[:, :n], self.seen):
            order = []
            for row in input_ids[:, :n]:
                match = (self.seen == row).all(-1).nonzero()
                if len(match) == 0:
                    raise RuntimeError("proxy-tuning lost track of a generated row")
                order.append(int(match[0]))
            index = torch.tensor(order, device=input_ids.device)
            for cache in self.caches:
                cache.reorder_cache(index)
            self.prompt_mask = self.prompt_mask[index]
        extra = input_ids.shape[1] - self.prompt_mask.shape[1]
        return torch.cat([self.prompt_mask, self.prompt_mask.new_ones((input_ids.shape[0], extra))], dim=1)

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.alpha == 0:
            return scores
        mask = self._sync(input_ids)
        start = 0 if self.seen is None else self.seen.shape[1]
        positions = _positions(mask)[:, start:]
        logits = []
        for i, model in enumerate(self.models):
            device = model.device
            if self.caches[i] is None:
                self.caches[i] = DynamicCache(config=model.config)  # filled in place by each pass
            out = model(input_ids=input_ids[:, start:].to(device), attention_mask=mask.to(device),
                        position_ids=positions.to(device), use_cache=True,
                        **{cache_keyword(model): self.caches[i]})
            logits.append(out.logits[:, -1, : self.width].float().to(scores.device))
        self.seen = input_ids.clone()
        combined = scores.clone()
        combined[:, : self.width] += self.alpha * (logits[0] - logits[1])
        combined[:, self.width:] = float("-inf")  # padding rows: not tokens
        return combined


class ProxyLM(LM):
    """Base, expert and anti-expert combined as ``base + alpha * (expert - anti)``."""

    def __init__(self, spec: ProxySpec, base: HFLM, expert: HFLM, anti: HFLM) -> None:
        super().__init__(spec.name, {"kind": "proxy", "base": base.info, "expert": expert.info,
                                     "anti": anti.info, "alpha": spec.alpha, "level": spec.level})
        self.spec, self.base, self.expert, self.anti = spec, base, expert, anti
        if spec.level == "token":
            for part in (expert, anti):
                if hasattr(part.model, "peft_config"):
                    raise FlanError(f"{part.name} is a virtual-token adapter (prompt / prefix tuning, "
                                    "P-tuning); token-level proxy-tuning needs LoRA, IA3 or full tuning")
            self.width = shared_width(base, [expert, anti])

    @classmethod
    def load(cls, spec: ProxySpec, batch_size: int | str = "auto") -> ProxyLM:
        """Load the three models (each named in its own load error)."""
        spec.check()
        if spec.level == "token":  # compare tokenizers before loading any weights
            from flan_builder.lm.hf import tokenizer_source
            from flan_builder.models import load_tokenizer

            tokenizers = {name: load_tokenizer(tokenizer_source(name))
                          for name in (spec.base, spec.expert, spec.anti)}
            for name in (spec.expert, spec.anti):
                require_same_tokenizer(spec.base, tokenizers[spec.base], name, tokenizers[name])
        parts = [HFLM.load(name, batch_size) for name in (spec.base, spec.expert, spec.anti)]
        return cls(spec, *parts)

    def loglikelihood(self, requests: list[LoglikelihoodRequest]) -> list[float]:
        alpha = self.spec.alpha
        if self.spec.level == "sequence":
            m, e, a = (part.loglikelihood(requests) for part in (self.base, self.expert, self.anti))
            return [mi + alpha * (ei - ai) for mi, ei, ai in zip(m, e, a, strict=True)]
        from flan_builder.lm.scoring import option_sums, per_row, scored_logits

        pad, w = self.base.tokenizer.pad_token_id, self.width

        def combined_scores(encoded: list[Any]) -> list[list[float]]:
            m = scored_logits(self.base.model, encoded, pad)
            e, a = (scored_logits(part.model, encoded, pad).logits.to(m.logits.device)
                    for part in (self.expert, self.anti))
            return per_row(encoded, option_sums(m.logits[:, :w] + alpha * (e[:, :w] - a[:, :w]), m))

        # one tokenizer: the base's encoding and batches serve all three models
        return self.base.score_requests(requests, combined_scores)

    def continuation_tokens(self, requests: list[LoglikelihoodRequest]) -> list[list[str]] | None:
        return self.base.continuation_tokens(requests)  # the base's tokenization (token level: all three's)

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        if self.spec.level == "sequence":
            raise FlanError("sequence-level proxy-tuning only scores options (each model in its own "
                            "tokenization); generation needs --proxy-level token and one shared tokenizer")

        def processors(inputs: Any) -> list[Any]:
            return [ProxyLogitsProcessor(self.expert.model, self.anti.model, self.spec.alpha,
                                         inputs["attention_mask"], self.width)]

        return self.base.generate(requests, processors=processors)

    def close(self) -> None:
        for part in (self.base, self.expert, self.anti):
            part.close()
