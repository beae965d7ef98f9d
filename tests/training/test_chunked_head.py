"""The chunked LM-head log-probabilities equal the whole-logits computation, values and gradients,
whether the head is frozen (adapters) or trains (full fine-tuning), for any chunk size."""

import pytest
import torch

from flan_builder.training.chunked_head import ChunkedLogProbs, chunk_rows


def reference(hidden, weight, bias, targets):
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    log_softmax = logits.log_softmax(-1)
    picked = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_softmax.exp() * log_softmax).sum(-1)
    return picked, entropy.detach(), (logits.argmax(-1) == targets).float()


def inputs(positions=37, width=16, vocabulary=50, head_trains=False, with_bias=False, seed=0,
           uniform=False):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(positions, width, generator=generator, requires_grad=True)
    weight = torch.randn(vocabulary, width, generator=generator).requires_grad_(head_trains)
    bias = torch.randn(vocabulary, generator=generator).requires_grad_(head_trains) if with_bias else None
    targets = torch.randint(vocabulary, (positions,), generator=generator)
    # Equal weights per position (the mean token loss: forward's gradients are scaled) or unequal
    # ones (TRL's DFT loss: the backward pass must weigh each position on its own).
    upstream = torch.full((positions,), -1 / max(positions, 1)) if uniform else \
        torch.rand(positions, generator=generator)
    return hidden, weight, bias, targets, upstream


def grads(tensors, loss):
    wanted = [t for t in tensors if t is not None and t.requires_grad]
    return torch.autograd.grad(loss, wanted)


@pytest.mark.parametrize("uniform", [True, False], ids=["mean-loss", "unequal-weights"])
@pytest.mark.parametrize("head_trains", [False, True], ids=["frozen-head", "trained-head"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("rows", [1, 8, 37, 100])
def test_chunks_give_the_whole_computation_values_and_gradients(head_trains, with_bias, rows, uniform):
    hidden, weight, bias, targets, upstream = inputs(head_trains=head_trains, with_bias=with_bias,
                                                     uniform=uniform)
    expected = reference(hidden, weight, bias, targets)
    got = ChunkedLogProbs.apply(hidden, weight, bias, targets, rows)
    for name, a, b in zip(("log_probs", "entropy", "is_top1"), got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
    assert not got[1].requires_grad and not got[2].requires_grad
    want = grads((hidden, weight, bias), (expected[0] * upstream).sum())
    have = grads((hidden, weight, bias), (got[0] * upstream).sum())
    assert len(have) == (3 if head_trains and with_bias else 2 if head_trains else 1)
    for a, b in zip(have, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_no_positions_give_an_empty_result_and_an_empty_gradient():
    hidden, weight, bias, targets, _ = inputs(positions=0)
    log_probs, entropy, _ = ChunkedLogProbs.apply(hidden, weight, bias, targets, 4)
    assert log_probs.shape == (0,) and entropy.shape == (0,)
    (grad,) = torch.autograd.grad(log_probs.sum(), hidden)
    assert grad.shape == hidden.shape


@pytest.mark.parametrize("uniform", [True, False], ids=["mean-loss", "unequal-weights"])
def test_under_bf16_autocast_it_matches_autocast_autograd(uniform):
    hidden, weight, bias, targets, upstream = inputs(head_trains=True, width=32, vocabulary=300,
                                                     uniform=uniform)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(hidden, weight, bias, targets)[0]
        got = ChunkedLogProbs.apply(hidden, weight, bias, targets, 7)[0]
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.02)
    want = grads((hidden, weight), (expected * upstream).sum())
    have = grads((hidden, weight), (got * upstream).sum())
    for a, b in zip(have, want, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=0.05, rtol=0.05)


def test_chunk_rows_bound_the_logits_a_chunk_holds():
    assert chunk_rows(262_144, torch.device("cpu")) == 128  # 128 MiB of float32 logits
    assert chunk_rows(49_152, torch.device("cpu")) == 682
    assert chunk_rows(262_144, torch.device("cuda")) == 1024
    assert chunk_rows(10**9, torch.device("cpu")) == 1
