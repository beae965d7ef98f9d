"""Rank classification: the log-likelihood of each option's tokens after the prompt.

Joining is the training one: the option is scored as ``separator + option`` after the
prompt. Tokenization follows lm-evaluation-harness: encode ``prompt + continuation``
together and score the tokens after ``len(encode(prompt))``, so a token that straddles
the boundary is never split in a way the model never saw.

The fast path (``score_shared_prefix``) runs each prompt once, keeps its key/value cache,
and runs every option of the row against a copy of that cache; only the positions that
are scored go through the LM head. ``score_full_sequences`` is the plain reference: one
full forward pass per (prompt, option) pair, every position projected. Both return the
same numbers (tests check it to 1e-4); the reference is also the fallback for models
that prepend virtual tokens (prompt tuning, prefix tuning, P-tuning), whose forward
must go through PEFT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Encoded:
    """One row: prompt tokens and, per option, the tokens to score after them."""

    prompt: list[int]
    options: list[list[int]]
    # False when some option's encoding changed the prompt's last tokens (boundary merge):
    # the options then do not share one prefix and the row is scored sequence by sequence.
    shared: bool = True
    fulls: list[list[int]] | None = None


def encode_row(tokenizer: Any, prompt: str, options: Sequence[str], separator: str) -> Encoded:
    """Tokenize a row the lm-evaluation-harness way (whole sequence, split at the prompt length)."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    fulls = tokenizer([prompt + separator + option for option in options])["input_ids"]
    cut = len(prompt_ids)
    scored = [full[cut:] for full in fulls]
    if any(not s for s in scored):
        raise ValueError("an option encodes to no tokens after the prompt")
    shared = all(full[:cut] == prompt_ids for full in fulls)
    return Encoded(prompt_ids, scored, shared, fulls)


def _backbone_and_head(model: Any) -> tuple[Any, Any]:
    return model.get_decoder() if hasattr(model, "get_decoder") else model.base_model, \
        model.get_output_embeddings()


def _pad(seqs: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def _token_logprobs(head: Any, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def score_shared_prefix(model: Any, rows: list[Encoded], pad_id: int) -> list[list[float]]:
    """Summed log-likelihood per option, each prompt run once and its cache shared by its options."""
    from transformers import DynamicCache

    backbone, head = _backbone_and_head(model)
    device = head.weight.device
    prompts = [r.prompt for r in rows]
    prompt_ids, prompt_mask = _pad(prompts, pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    cache = DynamicCache(config=model.config)
    out = backbone(input_ids=prompt_ids, attention_mask=prompt_mask, past_key_values=cache, use_cache=True)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    last_hidden = out.last_hidden_state[torch.arange(len(rows), device=device), lengths - 1]

    owner = [i for i, r in enumerate(rows) for _ in r.options]
    options = [o for r in rows for o in r.options]
    index = torch.tensor(owner, device=device)
    cache = out.past_key_values
    cache.reorder_cache(index)  # one copy of the prompt's keys/values per option
    option_ids, option_mask = _pad(options, pad_id)
    option_ids, option_mask = option_ids.to(device), option_mask.to(device)
    positions = lengths[index].unsqueeze(1) + torch.arange(option_ids.shape[1], device=device)
    attention = torch.cat([prompt_mask[index], option_mask], dim=1)
    hidden = backbone(input_ids=option_ids, attention_mask=attention, position_ids=positions,
                      past_key_values=cache, use_cache=True).last_hidden_state

    # Token j of an option is predicted by the hidden state before it: the prompt's last
    # position for j = 0, the option's position j - 1 after that. Only these go through the head.
    first = _token_logprobs(head, last_hidden[index], option_ids[:, 0])
    rest_mask = option_mask[:, 1:].bool()
    rest = _token_logprobs(head, hidden[:, :-1][rest_mask], option_ids[:, 1:][rest_mask])
    per_option = first.clone()
    per_option.index_add_(0, rest_mask.nonzero()[:, 0], rest)
    scores: list[list[float]] = [[] for _ in rows]
    for row, value in zip(owner, per_option.tolist(), strict=True):
        scores[row].append(value)
    return scores


@torch.no_grad()
def score_full_sequences(model: Any, rows: list[Encoded], pad_id: int) -> list[list[float]]:
    """Reference scoring: a full forward pass per (prompt, option) pair, every position projected."""
    device = next(model.parameters()).device
    pairs = [(i, r.fulls[k] if r.fulls else r.prompt + o, len(r.options[k]))
             for i, r in enumerate(rows) for k, o in enumerate(r.options)]
    ids, mask = _pad([p[1] for p in pairs], pad_id)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    # prompt-learning models return logits for their virtual tokens too: keep the text's
    logits = logits[:, -ids.shape[1]:]
    logprobs = logits.log_softmax(-1)
    scores: list[list[float]] = [[] for _ in rows]
    for n, (row, full, scored) in enumerate(pairs):
        end = len(full)
        targets = torch.tensor(full[end - scored:], device=device)
        picked = logprobs[n, end - scored - 1: end - 1].gather(-1, targets.unsqueeze(-1))
        scores[row].append(float(picked.sum()))
    return scores


def supports_shared_prefix(model: Any) -> bool:
    """Plain causal LMs (and merged adapters); not PEFT models that add virtual tokens."""
    config = getattr(model, "peft_config", None)
    if config:
        return not any(getattr(c, "is_prompt_learning", False) for c in config.values())
    return hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None


def score_rows(model: Any, rows: list[Encoded], pad_id: int) -> list[list[float]]:
    """Score a batch with the fastest exact method the model allows."""
    if supports_shared_prefix(model) and all(r.shared for r in rows):
        return score_shared_prefix(model, rows, pad_id)
    return score_full_sequences(model, rows, pad_id)
