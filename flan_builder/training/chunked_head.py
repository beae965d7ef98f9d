"""Next-token log-probabilities of the labelled positions through the LM head, a chunk at a time.

The loss needs one number per scored position, log p(label), yet autograd keeps the whole
(positions x vocabulary) float32 logits, their log-softmax and both gradients alive at once. With
a 262,144-word vocabulary (Gemma 3) and 64 rows of up to 376 completion tokens that is ~25 GB a
copy on a GPU; with SmolLM2 on a CPU a few hundred MB per micro-batch. Here each chunk of
positions is projected, reduced to its log-probability, entropy and top-1 hit, and freed before
the next, so only a chunk's logits ever exist.

The gradient of log p(label) with respect to the logits is ``onehot(label) - softmax``, which the
forward pass already holds chunk by chunk. So the forward pass also forms the gradients with
respect to the hidden states (positions x hidden, small) and, when the head trains, its weight,
as if every position's loss weighed the same. That is the case for the mean token loss (TRL's
default): the backward pass then only scales them, and no matmul is repeated. Any other
per-position weighting (TRL's DFT loss) makes the backward pass project each chunk again.
"""

from __future__ import annotations

from typing import Any

import torch

# Logit elements (float32) per chunk: bounded memory, yet large enough matmuls to run at speed.
CHUNK_ELEMENTS = {"cpu": 2**25, "cuda": 2**28}  # 128 MiB on a CPU, 1 GiB on a GPU


def chunk_rows(vocabulary: int, device: torch.device) -> int:
    return max(1, CHUNK_ELEMENTS.get(device.type, CHUNK_ELEMENTS["cuda"]) // vocabulary)


class ChunkedLogProbs(torch.autograd.Function):
    """``(hidden [P, d], weight [V, d], bias [V] | None, targets [P])`` ->
    ``(log_probs [P], entropy [P], is_top1 [P])``; only ``log_probs`` carries a gradient."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, rows: int) -> tuple[torch.Tensor, ...]:
        device_type = hidden.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type),
                        torch.get_autocast_dtype(device_type))
        ctx.rows = rows
        positions = hidden.shape[0]
        log_probs = hidden.new_empty(positions, dtype=torch.float32)
        entropy, is_top1 = torch.empty_like(log_probs), torch.empty_like(log_probs)
        lse = torch.empty_like(log_probs)
        # Gradients of sum(log p) (every position weighing 1), formed while the chunk is at hand.
        wants = ctx.needs_input_grad
        grad_hidden = torch.empty_like(hidden) if wants[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if wants[1] else None
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) \
            if bias is not None and wants[2] else None
        for start in range(0, positions, rows):
            end = min(start + rows, positions)
            chunk, target = hidden[start:end], targets[start:end]
            logits = torch.nn.functional.linear(chunk, weight, bias).float()
            chunk_lse = torch.logsumexp(logits, dim=-1)
            lse[start:end] = chunk_lse
            log_probs[start:end] = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - chunk_lse
            is_top1[start:end] = (logits.argmax(-1) == target).float()
            log_softmax = logits.sub_(chunk_lse.unsqueeze(-1))  # in place: the logits are done
            grad = log_softmax.exp()
            entropy[start:end] = -(grad * log_softmax).sum(-1)
            del logits, log_softmax
            grad.neg_()[torch.arange(end - start, device=grad.device), target] += 1.0  # onehot - p
            _accumulate(grad, chunk, weight, grad_hidden, grad_weight, grad_bias, start, end)
            del grad
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.unit_grads = (grad_hidden, grad_weight, grad_bias)
        ctx.mark_non_differentiable(entropy, is_top1)
        return log_probs, entropy, is_top1

    @staticmethod
    def backward(ctx: Any, grad_log_probs: torch.Tensor, *_: Any) -> tuple[Any, ...]:
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        grad_hidden, grad_weight, grad_bias = ctx.unit_grads
        ctx.unit_grads = None
        if grad_log_probs.numel() and bool((grad_log_probs == grad_log_probs[0]).all()):
            scale = grad_log_probs[0]  # every position weighs the same: scale what forward formed
            if grad_hidden is not None:
                grad_hidden.mul_(scale.to(grad_hidden.dtype))
            if grad_weight is not None:
                grad_weight.mul_(scale)
            if grad_bias is not None:
                grad_bias.mul_(scale)
        elif grad_log_probs.numel():  # unequal weights: project each chunk again
            if grad_weight is not None:
                grad_weight.zero_()
            if grad_bias is not None:
                grad_bias.zero_()
            device_type, enabled, dtype = ctx.autocast
            with torch.autocast(device_type, dtype=dtype, enabled=enabled):
                for start in range(0, hidden.shape[0], ctx.rows):
                    end = min(start + ctx.rows, hidden.shape[0])
                    chunk = hidden[start:end]
                    logits = torch.nn.functional.linear(chunk, weight, bias).float()
                    grad = logits.sub_(lse[start:end].unsqueeze(-1)).exp_().neg_()  # -softmax
                    grad[torch.arange(end - start, device=grad.device), targets[start:end]] += 1.0
                    grad.mul_(grad_log_probs[start:end].float().unsqueeze(-1))
                    _accumulate(grad, chunk, weight, grad_hidden, grad_weight, grad_bias, start, end)
                    del logits, grad
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None


def _accumulate(grad: torch.Tensor, chunk: torch.Tensor, weight: torch.Tensor,
                grad_hidden: torch.Tensor | None, grad_weight: torch.Tensor | None,
                grad_bias: torch.Tensor | None, start: int, end: int) -> None:
    """Add one chunk's d/d logits (``grad``, float32) into the input gradients."""
    if grad_hidden is not None:
        grad_hidden[start:end] = (grad.to(weight.dtype) @ weight).to(grad_hidden.dtype)
    if grad_weight is not None:
        grad_weight.addmm_(grad.t(), chunk.float())  # in place: no chunk-sized product to add
    if grad_bias is not None:
        grad_bias.add_(grad.sum(0))


def whole_log_probs(logits: torch.Tensor, targets: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same three from logits already computed for every position at once (a head that is
    not a plain ``nn.Linear``, e.g. an adapter on the LM head itself)."""
    logits = logits.float()
    log_softmax = logits.log_softmax(-1)
    picked = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(log_softmax.exp() * log_softmax).sum(-1)
        is_top1 = (logits.argmax(-1) == targets).to(logits.dtype)
    return picked, entropy, is_top1


def completion_log_probs(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor,
                         rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p(target), entropy and top-1 hit at each row of ``hidden`` [P, d] through ``head``."""
    if rows is None:
        rows = chunk_rows(head.weight.shape[0], hidden.device)
    return ChunkedLogProbs.apply(hidden, head.weight, head.bias, targets, rows)
