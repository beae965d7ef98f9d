"""Rank classification: the log-likelihood of each option's own tokens after its context.

The separator belongs to the context: an option is scored conditioned on ``prompt +
separator``, over the option's own tokens only. Scoring the separator too would add the
same few (often very unlikely) tokens to every option, and ``acc_norm``, which divides by
the option's length, would then pick the longest option.

Tokenization follows lm-evaluation-harness (``LM._encode_pair``): the whole sequence
``context + option`` is encoded once and split at the context's end, so no token is cut
in a way the model never saw. The split is where the option's characters begin (the fast
tokenizer's character offsets): the scored tokens are those that carry any of the
option's characters. When the separator's whitespace merges into the option's first token
(``" "`` + ``"True"`` is the one token ``" True"``), that token is scored whole, which is
lm-eval's rule of moving the context's trailing whitespace onto the continuation; with the
separator ``" "`` this gives exactly lm-eval's requests whenever the space merges into the
option's first token. Where it does not (SmolLM2 keeps the space before a digit as its own
token: PIQA's "3 tablespoons ..."), lm-eval scores that lone space and this does not; it adds the
same log-probability to every option of the row. A tokenizer without offsets splits after the
most leading tokens that decode to a prefix of the context (the same place).

The fast path (``logits_tree``) merges a row's token sequences (context + option, for every
option) into a trie and runs the whole trie as one sequence: every distinct prefix is one
position, so the context runs once, a prefix that options share (PIQA's near-identical
solutions) runs once, and an option's last token, which predicts nothing that is scored,
does not run at all. A 4-D attention mask lets each position see exactly its ancestors, and
the position ids are its depth, so each position computes what it would in its own
sequence. Rows are right-padded into one batch; only the positions that predict a scored
token go through the LM head, each once. ``logits_shared_prefix`` (the context once, its
key/value cache copied to every option) is the path for attention kernels that take no
custom mask (flash attention). ``logits_full_sequences`` is the plain reference: one full
forward pass per (context, option) pair, every position projected. All three return the
same numbers (tests check it to 1e-4); the reference is also the fallback for models that
prepend virtual tokens (prompt tuning, prefix tuning, P-tuning), whose forward must go
through PEFT.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Encoded:
    """One row: context tokens and, per option, the tokens to score after them."""

    prompt: list[int]
    options: list[list[int]]
    # False when the options' joint encodings do not all start with the same context tokens
    # (a boundary merge): the row is then scored sequence by sequence from ``fulls``.
    shared: bool = True
    fulls: list[list[int]] | None = None
    _tree: Tree | None = field(default=None, repr=False, compare=False)

    @property
    def tree(self) -> Tree:
        """The row's sequences as a token trie (built once; several models can score the same rows)."""
        if self._tree is None:
            self._tree = build_tree(self)
        return self._tree


@dataclass
class Tree:
    """A row's token sequences merged into a trie: each distinct prefix is one position, run once."""

    tokens: list[int]  # one per node; a parent always comes before its children
    depth: list[int]  # the node's position in its sequences (its position id)
    member: list[int]  # bit k set: sequence k passes through the node
    predictors: list[int]  # per scored token, option by option: the node whose output predicts it


def build_tree(row: Encoded) -> Tree:
    """Merge every option's joint sequence (context + option, without its last token, which predicts
    nothing scored) into a trie, and note which node predicts each scored token."""
    sequences = row.fulls if row.fulls is not None else [row.prompt + o for o in row.options]
    tokens: list[int] = []
    depth: list[int] = []
    member: list[int] = []
    predictors: list[int] = []
    children: dict[tuple[int, int], int] = {}
    for k, (sequence, option) in enumerate(zip(sequences, row.options, strict=True)):
        cut = len(sequence) - len(option)
        if cut < 1:
            raise ValueError("an option has no context before it: its first token cannot be scored")
        node, path = -1, []
        for d, token in enumerate(sequence[:-1]):
            child = children.get((node, token))
            if child is None:
                child = children[(node, token)] = len(tokens)
                tokens.append(token)
                depth.append(d)
                member.append(0)
            member[child] |= 1 << k
            node = child
            path.append(node)
        predictors.extend(path[cut - 1:])
    return Tree(tokens, depth, member, predictors)


Split = tuple[list[list[int]], list[int]]  # joint encodings, and where each one's scored tokens begin


def _split_by_offsets(tokenizer: Any, texts: list[str], start: int) -> Split | None:
    """Scored tokens begin at the first token that ends past character ``start`` (carries a
    character of the option). None when the tokenizer gives no character offsets."""
    try:
        encoded = tokenizer(texts, return_offsets_mapping=True)
    except NotImplementedError:
        return None
    if "offset_mapping" not in encoded:
        return None
    cuts = [next((k for k, (_, end) in enumerate(offsets) if end > start), len(offsets))
            for offsets in encoded["offset_mapping"]]
    return encoded["input_ids"], cuts


def _split_by_decoding(tokenizer: Any, texts: list[str], context: str) -> Split:
    """Without offsets: the most leading tokens that decode to a prefix of the context (found from
    the end, so only the option's few tokens are tried)."""
    fulls = tokenizer(texts)["input_ids"]
    cuts = []
    for full in fulls:
        cut = len(full)
        while cut > 0 and not context.startswith(tokenizer.decode(
                full[:cut], skip_special_tokens=True, clean_up_tokenization_spaces=False)):
            cut -= 1
        cuts.append(cut)
    return fulls, cuts


def encode_row(tokenizer: Any, prompt: str, options: Sequence[str], separator: str = "") -> Encoded:
    """Tokenize a row the lm-evaluation-harness way (whole sequence, split where the option starts);
    the context is ``prompt + separator`` and only the options' own tokens are scored."""
    context = prompt + separator
    texts = [context + option for option in options]
    fulls, cuts = _split_by_offsets(tokenizer, texts, len(context)) or \
        _split_by_decoding(tokenizer, texts, context)
    scored = [full[cut:] for full, cut in zip(fulls, cuts, strict=True)]
    if any(not s for s in scored):
        raise ValueError("an option encodes to no tokens after its context")
    contexts = [full[:cut] for full, cut in zip(fulls, cuts, strict=True)]
    shared = all(c == contexts[0] for c in contexts)
    return Encoded(contexts[0], scored, shared, fulls)


def merge_rows(rows: list[Encoded]) -> Encoded:
    """Several contexts' rows as one (options in order): on a trie their common prefix runs once."""
    fulls = [full for r in rows for full in (r.fulls or [r.prompt + o for o in r.options])]
    return Encoded(rows[0].prompt, [o for r in rows for o in r.options], shared=False, fulls=fulls)


def _backbone_and_head(model: Any) -> tuple[Any, Any]:
    return model.get_decoder() if hasattr(model, "get_decoder") else model.base_model, \
        model.get_output_embeddings()


def cache_keyword(model: Any) -> str:
    """The ``forward`` argument that takes a key/value cache: ``cache`` from transformers 5.x on
    (``past_key_values`` there is deprecated, removed in 5.40), ``past_key_values`` before."""
    import inspect

    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def _pad(seqs: list[list[int]], value: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        where = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, where] = torch.tensor(s, dtype=torch.long)
        mask[i, where] = 1
    return ids, mask


@dataclass
class ScoredLogits:
    """Next-token logits at every scored position, in a fixed order: option by option, token by token.

    Row ``offsets[o] + j`` predicts token ``j`` of option ``o`` (options of all rows, flattened).
    The order does not depend on the scoring path, so the logits of several models that share a
    tokenizer line up position by position (proxy-tuning combines them there).
    """

    distinct: torch.Tensor  # [distinct predicting positions, vocabulary], float32
    targets: torch.Tensor  # [positions]
    option: torch.Tensor  # [positions]: which option each position belongs to
    n_options: int
    # which row of ``distinct`` each position reads (a trie's context end predicts every option's
    # first token); None: one row per position
    rows: torch.Tensor | None = None

    @property
    def logits(self) -> torch.Tensor:
        """[positions, vocabulary]: one row per scored position (a copy where positions share a row)."""
        return self.distinct if self.rows is None else self.distinct[self.rows]


def _layout(rows: list[Encoded]) -> tuple[list[int], list[list[int]], torch.Tensor]:
    """(owner row of each option, the options, offset of each option's first position)."""
    owner = [i for i, r in enumerate(rows) for _ in r.options]
    options = [o for r in rows for o in r.options]
    lengths = torch.tensor([len(o) for o in options])
    offsets = torch.cumsum(lengths, 0) - lengths
    return owner, options, offsets


def _targets(options: list[list[int]], offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = torch.tensor([t for o in options for t in o], dtype=torch.long)
    option = torch.repeat_interleave(torch.arange(len(options)), torch.tensor([len(o) for o in options]))
    return flat, option


@torch.no_grad()
def logits_shared_prefix(model: Any, rows: list[Encoded], pad_id: int) -> ScoredLogits:
    """Each prompt run once, its cache shared by its options; only scored positions hit the LM head."""
    from transformers import DynamicCache

    backbone, head = _backbone_and_head(model)
    device = head.weight.device
    prompts = [r.prompt for r in rows]
    # Prompts are padded on the left, so every prompt ends in the cache's last slot: a
    # sliding-window layer (Gemma 3) keeps the last W slots, which are then each row's own
    # last W tokens. Right padding would leave a short row's window full of padding whenever
    # a longer prompt in the batch passes W.
    prompt_ids, prompt_mask = _pad(prompts, pad_id, left=True)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    prompt_positions = (prompt_mask.cumsum(1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)  # filled in place by the forward pass
    keyword = cache_keyword(backbone)
    out = backbone(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=prompt_positions,
                   use_cache=True, **{keyword: cache})
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    last_hidden = out.last_hidden_state[:, -1]

    owner, options, offsets = _layout(rows)
    index = torch.tensor(owner, device=device)
    cache.reorder_cache(index)  # one copy of the prompt's keys/values per option
    option_ids, option_mask = _pad(options, pad_id)
    option_ids, option_mask = option_ids.to(device), option_mask.to(device)
    positions = lengths[index].unsqueeze(1) + torch.arange(option_ids.shape[1], device=device)
    attention = torch.cat([prompt_mask[index], option_mask], dim=1)
    hidden = backbone(input_ids=option_ids, attention_mask=attention, position_ids=positions,
                      use_cache=True, **{keyword: cache}).last_hidden_state

    # Token j of an option is predicted by the hidden state before it: the prompt's last
    # position for j = 0, the option's position j - 1 after that. Only these go through the head.
    rest_mask = option_mask[:, 1:].bool()
    picked = torch.cat([last_hidden[index], hidden[:, :-1][rest_mask]])
    where = torch.cat([offsets, (offsets.unsqueeze(1) + 1 + torch.arange(rest_mask.shape[1]))[
        rest_mask.cpu()]])
    logits = head(picked).float()
    ordered = torch.empty_like(logits)
    ordered[where.to(device)] = logits
    targets, option = _targets(options, offsets)
    return ScoredLogits(ordered, targets.to(device), option.to(device), len(options))


_BITS = 62  # membership bits per int64 word (the sign bit stays clear)


def _tree_masks(trees: list[Tree], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(position ids, [rows, width, width] bool: query sees key) for right-padded trees.

    A node sees another iff that one is its ancestor or itself: every sequence through the query
    also passes the key, at a depth no greater (a sequence passes one node per depth, so a node that
    is not an ancestor misses at least one of the query's sequences)."""
    sequences = max(max(m.bit_length() for m in t.member) for t in trees)
    words = -(-sequences // _BITS)
    low_bits = (1 << _BITS) - 1
    depth = torch.zeros((len(trees), width), dtype=torch.long)
    member = torch.zeros((words, len(trees), width), dtype=torch.long)
    for i, tree in enumerate(trees):
        depth[i, : len(tree.depth)] = torch.tensor(tree.depth, dtype=torch.long)
        member[:, i, : len(tree.member)] = torch.tensor([tree.member] if words == 1 else [
            [(m >> (_BITS * w)) & low_bits for m in tree.member] for w in range(words)], dtype=torch.long)
    query, key = member.unsqueeze(-1), member.unsqueeze(-2)
    sees = ((query & ~key) == 0).all(0) & (depth.unsqueeze(1) <= depth.unsqueeze(2))
    sees &= member.ne(0).any(0).unsqueeze(1)  # never a padding key
    sees |= torch.eye(width, dtype=torch.bool)  # a padding query sees itself (no empty softmax row)
    return depth, sees


def tree_supported(model: Any) -> bool:
    """Whether the model's attention takes a custom 4-D mask (sdpa, eager; not flash attention),
    with full and sliding-window layers only."""
    config = model.config
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager") and \
        kinds <= {"full_attention", "sliding_attention"}


@torch.no_grad()
def logits_tree(model: Any, rows: list[Encoded], pad_id: int) -> ScoredLogits:
    """Each row's trie run once (one batch, one forward pass); only predicting nodes hit the LM head."""
    backbone, head = _backbone_and_head(model)
    device = head.weight.device
    trees = [row.tree for row in rows]
    width = max(len(t.tokens) for t in trees)
    ids = torch.full((len(trees), width), pad_id, dtype=torch.long)
    for i, tree in enumerate(trees):
        ids[i, : len(tree.tokens)] = torch.tensor(tree.tokens, dtype=torch.long)
    depth, sees = _tree_masks(trees, width)
    config = model.config
    masks = {"full_attention": sees}
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        distance = depth.unsqueeze(2) - depth.unsqueeze(1)  # query's depth - key's
        alone = torch.eye(width, dtype=torch.bool)  # a padding query still sees itself
        masks["sliding_attention"] = sees & (distance < config.sliding_window) | alone
    if config._attn_implementation == "eager":  # eager adds the mask to the attention scores
        dtype = head.weight.dtype
        masks = {k: torch.zeros(m.shape, dtype=dtype).masked_fill(~m, torch.finfo(dtype).min)
                 for k, m in masks.items()}
    masks = {k: m.unsqueeze(1).to(device) for k, m in masks.items()}
    attention = masks if len(masks) > 1 else masks["full_attention"]
    hidden = backbone(input_ids=ids.to(device), attention_mask=attention, position_ids=depth.to(device),
                      use_cache=False).last_hidden_state

    # a node that predicts several scored tokens (a shared context's last token) goes through the head once
    where = torch.cat([torch.tensor(t.predictors, dtype=torch.long) + i * width for i, t in enumerate(trees)])
    unique, inverse = torch.unique(where, return_inverse=True)
    logits = head(hidden.reshape(-1, hidden.shape[-1])[unique.to(device)]).float()
    _, options, offsets = _layout(rows)
    targets, option = _targets(options, offsets)
    return ScoredLogits(logits, targets.to(device), option.to(device), len(options), inverse.to(device))


def _virtual_tokens(model: Any) -> int:
    """Positions a prompt-learning adapter puts before the text: prompt tuning and P-tuning prepend
    their soft tokens to the sequence; prefix tuning keeps its own in the key/value cache."""
    configs = getattr(model, "peft_config", None) or {}
    config = configs.get(getattr(model, "active_adapter", None))
    if config is None or not getattr(config, "is_prompt_learning", False) or \
            config.peft_type.value in ("PREFIX_TUNING", "CARTRIDGE"):
        return 0
    return int(config.num_virtual_tokens)


def _takes_logits_to_keep(model: Any) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(type(base).forward).parameters


@torch.no_grad()
def logits_full_sequences(model: Any, rows: list[Encoded], pad_id: int) -> ScoredLogits:
    """Reference path: a full forward pass per (prompt, option) pair (what prompt-learning models need,
    their forward going through PEFT). Only the positions that predict a scored token go through the
    LM head (transformers' ``logits_to_keep``): at every position, Gemma's 262k-word head would cost
    more than the body and hold a [pairs, length, vocabulary] tensor."""
    device = next(model.parameters()).device
    owner, options, offsets = _layout(rows)
    fulls = [r.fulls[k] if r.fulls else r.prompt + o for r in rows for k, o in enumerate(r.options)]
    ids, mask = _pad(fulls, pad_id)
    targets, option = _targets(options, offsets)
    spans = [(len(full) - len(options[n]) - 1, len(full) - 1) for n, full in enumerate(fulls)]
    if _takes_logits_to_keep(model):
        virtual = _virtual_tokens(model)
        keep = torch.zeros((len(fulls), virtual + ids.shape[1]), dtype=torch.bool)
        for n, (start, end) in enumerate(spans):
            keep[n, virtual + start: virtual + end] = True
        # a boolean mask keeps exactly those positions, flattened row by row: option by option, in order
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                       logits_to_keep=keep.to(device)).logits.float()
        return ScoredLogits(logits, targets.to(device), option.to(device), len(options))
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    # prompt-learning models return logits for their virtual tokens too: keep the text's
    logits = logits[:, -ids.shape[1]:]
    picked = [logits[n, start: end] for n, (start, end) in enumerate(spans)]
    return ScoredLogits(torch.cat(picked), targets.to(device), option.to(device), len(options))


def supports_shared_prefix(model: Any) -> bool:
    """Plain causal LMs (and merged adapters); not PEFT models that add virtual tokens."""
    config = getattr(model, "peft_config", None)
    if config:
        return not any(getattr(c, "is_prompt_learning", False) for c in config.values())
    return hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None


def scored_logits(model: Any, rows: list[Encoded], pad_id: int) -> ScoredLogits:
    """The logits at every scored position, by the fastest exact path the model allows."""
    if supports_shared_prefix(model) and tree_supported(model):
        return logits_tree(model, rows, pad_id)
    if supports_shared_prefix(model) and all(r.shared for r in rows):
        return logits_shared_prefix(model, rows, pad_id)
    return logits_full_sequences(model, rows, pad_id)


def row_length(model: Any, row: Encoded) -> int:
    """What a row costs the path ``scored_logits`` takes: its trie's nodes, or its prompt's tokens."""
    if supports_shared_prefix(model) and tree_supported(model):
        return len(row.tree.tokens)
    return len(row.prompt)


def option_sums(logits: torch.Tensor, scored: ScoredLogits, rows: torch.Tensor | None = None) -> list[float]:
    """Summed log-probability of each option's tokens under ``logits`` (one row per position, or the
    rows ``rows`` points each position at)."""
    # log p(target) = logit(target) - logsumexp(logits): no [positions, vocabulary] log_softmax written
    normaliser = logits.logsumexp(-1)
    if rows is None:
        logprobs = logits.gather(-1, scored.targets.unsqueeze(-1)).squeeze(-1) - normaliser
    else:
        logprobs = logits[rows, scored.targets] - normaliser[rows]
    sums = torch.zeros(scored.n_options, dtype=logprobs.dtype, device=logprobs.device)
    sums.index_add_(0, scored.option, logprobs)
    return sums.tolist()


def per_row(rows: list[Encoded], flat: list[float]) -> list[list[float]]:
    """Split option scores (flattened over rows) back into one list per row."""
    out, start = [], 0
    for row in rows:
        out.append(flat[start: start + len(row.options)])
        start += len(row.options)
    return out


def _summed(rows: list[Encoded], scored: ScoredLogits) -> list[list[float]]:
    return per_row(rows, option_sums(scored.distinct, scored, scored.rows))


def score_shared_prefix(model: Any, rows: list[Encoded], pad_id: int) -> list[list[float]]:
    """Summed log-likelihood per option, each prompt run once and its cache shared by its options."""
    return _summed(rows, logits_shared_prefix(model, rows, pad_id))


def score_tree(model: Any, rows: list[Encoded], pad_id: int) -> list[list[float]]:
    """Summed log-likelihood per option, each row's sequences run once as a token trie."""
    return _summed(rows, logits_tree(model, rows, pad_id))


def score_full_sequences(model: Any, rows: list[Encoded], pad_id: int) -> list[list[float]]:
    """Reference scoring: a full forward pass per (prompt, option) pair, every position projected."""
    return _summed(rows, logits_full_sequences(model, rows, pad_id))


def score_rows(model: Any, rows: list[Encoded], pad_id: int) -> list[list[float]]:
    """Score a batch with the fastest exact method the model allows."""
    return _summed(rows, scored_logits(model, rows, pad_id))
