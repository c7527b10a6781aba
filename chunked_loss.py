"""
The same loss, at scale: the output head and the loss applied to a few sequences at a time.

A language model's last step, logits = h @ W.T, makes a (batch, seq_len, vocab) tensor: at 345M with a
micro-batch of 32 x 128 and BabyLlama's 16k vocabulary that is 262 MB in fp32, and a distillation loss holds
several (the student's, each teacher's, their softmaxes, and what autograd keeps for the backward). Yet the
loss is a mean over sequences, so it can be computed a chunk of sequences at a time:

    loss = sum over chunks c of (b_c / B) * formula(h_c @ W.T, targets_c)

For each chunk, torch.func.grad_and_value differentiates the formula itself (distill_loss, CE, the cached
sparse loss: whatever the objective's formula is) with respect to the chunk's hidden states and the head, and
the chunk's logits are freed before the next chunk is made. No gradient is written by hand: autograd derives it,
chunk by chunk, from the very function the plain path calls on full logits; only (b, seq_len, vocab) exists at a
time. The gradients of h and W then enter the model's backward through a linear stand-in, (h * dh).sum() +
(W * dW).sum(), whose value is removed again: the loss keeps its value, and backward sends dh into the model
below the head and dW into the head, exactly what autograd of the full loss would send.

This is the technique of Liger-Kernel's chunked losses (Hsu et al., "Liger Kernel", arXiv 2410.10989;
github.com/linkedin/Liger-Kernel, liger_kernel/chunked_loss), here with chunks of whole sequences, so that a
loss that averages per sequence (the papers' KL summed over positions / batch, the per-token mean, CE over
every position) needs no rewriting: each chunk's own mean, weighted by its share of the batch. Under
torch.compile (on a GPU by default) each chunk's step is compiled on its own, as Liger-Kernel compiles its
per-chunk step: one small graph run for every chunk, where tracing the loop would unroll every chunk into one
graph (two minutes to compile 16 chunks on a CPU). tests/test_chunked_loss.py checks the chunked loss against
the plain one in value and every gradient; bench/bench_loss.py times it against Liger-Kernel's.
"""

import torch


def chunk_step(formula, share, h_c, W, *per_sequence_c):
    """One chunk: (d/dh_c, d/dW) and the value of share * formula(h_c @ W.T, *per_sequence_c) (its part of the mean)."""
    def part(h_c, W, *rest):
        loss, logs = formula(h_c @ W.t(), *rest)  # (b, L, V) logits: the only ones that exist
        return share * loss, {k: share * v for k, v in logs.items()}

    return torch.func.grad_and_value(part, argnums=(0, 1), has_aux=True)(h_c, W, *per_sequence_c)


def chunked_loss(formula, h, W, per_sequence, chunk):
    """(loss, logs) equal to formula(h @ W.T, *per_sequence) and its gradients, computed `chunk` sequences at a time.

    h (B, L, dim): the final hidden states (autograd flows back through them into the model); W (V, dim): the head.
    per_sequence: tensors whose first dimension is the batch, cut along with h (targets, teachers' hidden states,
    cached targets). formula(logits (b, L, V), *per_sequence_b) -> (loss, {name: scalar}), a mean over the b
    sequences it is given; every logged number is averaged over chunks the same way."""
    # Under torch.compile the loop is not traced (unrolled, 16 chunks took two minutes to compile): each chunk_step
    # is compiled on its own. Asked for here, while tracing, rather than by a decorator: the decorator imports
    # torch._dynamo, which doubled the start-up time of every script (about 1.5 s more, compiled or not).
    loop = torch.compiler.disable(chunk_loop, recursive=False) if torch.compiler.is_compiling() else chunk_loop
    return loop(formula, h, W, per_sequence, chunk)


def chunk_loop(formula, h, W, per_sequence, chunk):
    """chunked_loss's loop over chunks."""
    B = h.shape[0]
    hd, Wd = h.detach(), W.detach()
    dh, dW = torch.empty_like(hd), torch.zeros_like(Wd)
    loss, logs = 0.0, {}
    for i in range(0, B, chunk):
        share = min(chunk, B - i) / B  # the chunk's weight in a mean over the batch's sequences
        (dh_c, dW_c), (loss_c, logs_c) = chunk_step(formula, share, hd[i : i + chunk], Wd, *[t[i : i + chunk] for t in per_sequence])
        dh[i : i + chunk] = dh_c
        dW += dW_c
        loss = loss + loss_c
        logs = {k: logs.get(k, 0.0) + v for k, v in logs_c.items()}
    stand_in = (h * dh).sum() + (W * dW).sum()  # d stand_in / d h = dh, d stand_in / d W = dW
    return loss + (stand_in - stand_in.detach()), logs
