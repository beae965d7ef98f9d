"""Next-token log-probabilities of the labelled positions through the LM head, a chunk at a time.

The loss needs one number per scored position, log p(label), yet autograd keeps the whole
(positions x vocabulary) float32 logits, their log-softmax and both gradients alive at once. With
a 262,144-word vocabulary (Gemma 3) and 64 rows of up to 447 completion tokens that is ~30 GB a
copy on a GPU; with SmolLM2 on a CPU a few hundred MB per micro-batch. Here each chunk of
positions is projected, reduced to its log-probability, entropy and top-1 hit, and freed before
the next, so only a chunk's logits ever exist.

The gradient of log p(label) with respect to the logits is ``onehot(label) - softmax``. When the
head is frozen (LoRA and the other adapters) the forward pass already holds both, so it stores
the per-position gradient with respect to the hidden state (positions x hidden, small) and the
backward pass only scales it: no matmul is repeated. When the head trains (full fine-tuning) its
weight gradient needs the incoming per-position gradients, so the backward pass projects each
chunk again (one more head matmul, instead of keeping the logits).
"""

from __future__ import annotations

from typing import Any

import torch

# Logit elements (float32) per chunk: bounded memory, yet large enough matmuls to run at speed.
CHUNK_ELEMENTS = {"cpu": 2**24, "cuda": 2**28}  # 64 MiB on a CPU, 1 GiB on a GPU


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
        head_trains = weight.requires_grad or (bias is not None and bias.requires_grad)
        positions = hidden.shape[0]
        log_probs = hidden.new_empty(positions, dtype=torch.float32)
        entropy, is_top1 = torch.empty_like(log_probs), torch.empty_like(log_probs)
        lse = torch.empty_like(log_probs)
        # d log p / d hidden, kept when the head is frozen (backward then just scales it)
        keep_grad = ctx.needs_input_grad[0] and not head_trains
        grad_hidden = torch.empty_like(hidden) if keep_grad else None
        for start in range(0, positions, rows):
            end = min(start + rows, positions)
            logits = torch.nn.functional.linear(hidden[start:end], weight, bias).float()
            target = targets[start:end]
            chunk_lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            lse[start:end] = chunk_lse
            log_probs[start:end] = picked - chunk_lse
            is_top1[start:end] = (logits.argmax(-1) == target).float()
            log_softmax = logits.sub_(chunk_lse.unsqueeze(-1))  # in place: the logits are done
            probs = log_softmax.exp()
            entropy[start:end] = -(probs * log_softmax).sum(-1)
            del log_softmax
            if grad_hidden is not None:
                probs.neg_()[torch.arange(end - start, device=probs.device), target] += 1.0
                grad_hidden[start:end] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
            del logits, probs
        ctx.rows = rows
        if head_trains:
            ctx.save_for_backward(hidden, weight, bias, targets, lse)
        else:
            ctx.save_for_backward(grad_hidden)
        ctx.head_trains = head_trains
        ctx.mark_non_differentiable(entropy, is_top1)
        return log_probs, entropy, is_top1

    @staticmethod
    def backward(ctx: Any, grad_log_probs: torch.Tensor, *_: Any) -> tuple[Any, ...]:
        if not ctx.head_trains:
            (grad_hidden,) = ctx.saved_tensors
            if grad_hidden is None:
                return None, None, None, None, None
            scale = grad_log_probs.to(grad_hidden.dtype).unsqueeze(-1)
            return grad_hidden * scale, None, None, None, None
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        device_type, enabled, dtype = ctx.autocast
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) \
            if bias is not None else None
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            for start in range(0, hidden.shape[0], ctx.rows):
                end = min(start + ctx.rows, hidden.shape[0])
                chunk = hidden[start:end]
                logits = torch.nn.functional.linear(chunk, weight, bias).float()
                grad = logits.sub_(lse[start:end].unsqueeze(-1)).exp_().neg_()  # -softmax
                grad[torch.arange(end - start, device=grad.device), targets[start:end]] += 1.0
                grad.mul_(grad_log_probs[start:end].float().unsqueeze(-1))
                if grad_hidden is not None:
                    grad_hidden[start:end] = (grad.to(weight.dtype) @ weight).to(hidden.dtype)
                grad_weight.add_(grad.t() @ chunk.float())
                if grad_bias is not None:
                    grad_bias.add_(grad.sum(0))
                del logits, grad
        grad_weight = grad_weight.to(weight.dtype) if ctx.needs_input_grad[1] else None
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype) if ctx.needs_input_grad[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None


def completion_log_probs(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor,
                         rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log p(target), entropy and top-1 hit at each row of ``hidden`` [P, d] through ``head``."""
    if rows is None:
        rows = chunk_rows(head.weight.shape[0], hidden.device)
    return ChunkedLogProbs.apply(hidden, head.weight, head.bias, targets, rows)
