"""
GPT-2 (Radford et al. 2019), the other teacher of BabyLlama (Timiryasov & Tastet, arXiv 2308.02019): their
58M Llama student learned from a GPT-2 705M and a Llama 360M together. Read model.py first; this file is
the same transformer with GPT-2's choices, and only those, written out:

| part             | model.py's Llama                     | GPT-2 (this file)                                        |
|------------------|--------------------------------------|----------------------------------------------------------|
| positions        | RoPE, rotating q and k in attention  | a learned table of max_seq_len vectors added to the input |
| normalisation    | RMSNorm, a gain, no bias             | LayerNorm (subtract the mean), a gain and a bias, eps 1e-5 |
| projections      | no biases                            | a bias on every linear layer but the output head          |
| feed-forward     | SwiGLU, three matrices               | 4 x dim, two matrices, GELU (tanh approximation)          |
| attention        | grouped-query heads possible         | plain multi-head (q, k, v from one matrix, c_attn)        |
| output head      | tied or not                          | always tied to the token embedding                       |
| dropout          | none                                 | 0.1 on the embeddings, the attention probabilities and    |
|                  |                                      | each residual branch, in training only                   |
| initialisation   | N(0, 0.02) everywhere                | N(0, 0.02), biases 0, the two c_proj per block N(0, 0.02 / sqrt(2 n_layers)) |

Both blocks are pre-norm (x + f(norm(x))) with a final norm before the head: GPT-2 moved the LayerNorm in
front of each sub-block (Radford et al. 2019, section 2.3), and Llama kept that. The values above are the
Hugging Face GPT2Config defaults that BabyLlama's training script used (activation gelu_new,
layer_norm_epsilon 1e-5, initializer_range 0.02, resid/embd/attn_pdrop 0.1); export_hf.py writes this
model as a transformers GPT2LMHeadModel, and the tests compare the two logit for logit.

The interface is model.Llama's, so that training, distillation, evaluation and sampling take either model:
forward(idx, causal, return_hidden) -> logits (B, T, vocab), or the final-norm hidden states (B, T, dim); .output, the (tied) head;
.config; num_params(matmul_only); flops_per_token(seq_len, backward); configure_optimizer(...); generate(...).
The last four need nothing architecture-specific and are model.Llama's own functions, reused below.

Pitfall, dropout: it draws its masks from torch's global random generator, so a run resumed after a kill
draws the same masks only if that generator is re-seeded identically: train.py seeds it from (seed, step,
micro-step, rank) before every micro-batch. And a GPT-2 must be in eval mode (teachers, evaluation) for its
logits to be a function of its input.
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from model import Llama


@dataclass
class GPT2Config:
    vocab_size: int = 16000
    dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    max_seq_len: int = 256  # rows of the learned position table: parameters (BabyLlama: 2 x 128 positions)
    norm_eps: float = 1e-5  # LayerNorm epsilon (Hugging Face GPT-2: layer_norm_epsilon 1e-5)
    dropout: float = 0.1  # embeddings, attention probabilities and residual branches, in training only

    def __post_init__(self):
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected a positive number")
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout}: expected a probability in [0, 1)")

    @property
    def head_dim(self):
        return self.dim // self.n_heads

    @classmethod
    def from_dict(cls, d):
        """Build from any dict that holds (at least) the config's fields; other keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.n_heads, self.head_dim, self.dropout = cfg.n_heads, cfg.head_dim, cfg.dropout
        self.c_attn = nn.Linear(cfg.dim, 3 * cfg.dim)  # q, k and v of every head, one matrix (and bias)
        self.c_proj = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x, causal):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_heads, self.head_dim).transpose(1, 2) for t in self.c_attn(x).split(C, dim=-1))  # (B, n_heads, T, head_dim)
        # No rotation: the positions were added to the input. Dropout on the attention probabilities, in training.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, dim)
        return F.dropout(self.c_proj(y), self.dropout, self.training)


class MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.dropout = cfg.dropout
        self.c_fc = nn.Linear(cfg.dim, 4 * cfg.dim)
        self.c_proj = nn.Linear(4 * cfg.dim, cfg.dim)

    def forward(self, x):
        # GELU, tanh approximation (GPT-2's "gelu_new"; the exact erf GELU differs by up to ~1e-3)
        return F.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, causal):
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class GPT2(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embeddings = nn.Embedding(cfg.max_seq_len, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.output.weight = self.tok_embeddings.weight  # tied: one matrix reads tokens in and writes them out
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """Every weight's initialisation, in one place (Hugging Face GPT-2, initializer_range 0.02):
        | tensor                                        | init                            |
        | tok_embeddings (= output), pos_embeddings     | N(0, 0.02)                      |
        | c_attn, c_fc weights; attn.c_proj, mlp.c_proj | N(0, 0.02); N(0, 0.02 / sqrt(2 n_layers)) |
        | every bias                                    | 0                               |
        | LayerNorm weight, bias                        | 1, 0                            |
        Each block adds two branches (attention, MLP) to the residual stream, 2 n_layers in all; scaling the
        layers that write into it (c_proj) by 1/sqrt(2 n_layers) keeps its variance from growing with depth
        (Radford et al. 2019, section 2.3)."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif ".ln_" in name or name.startswith("norm."):
                p.fill_(1.0)
            elif name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, mean=0.0, std=0.02)

    def forward(self, idx, causal=True, return_hidden=False):
        """Next-token logits (B, T, vocab) of token ids idx (B, T); with return_hidden, the final-norm hidden states (B, T, dim)."""
        B, T = idx.shape
        if T > self.config.max_seq_len:  # there is no position vector beyond the table
            raise ValueError(f"sequence length {T} exceeds the model's max_seq_len={self.config.max_seq_len}")
        pos = torch.arange(T, device=idx.device)
        x = F.dropout(self.tok_embeddings(idx) + self.pos_embeddings(pos), self.config.dropout, self.training)  # (B, T, dim)
        for layer in self.layers:
            x = layer(x, causal)
        h = self.norm(x)
        return h if return_hidden else self.output(h)

    # Nothing architecture-specific in these: the Llama's own functions (they use forward, output, config,
    # num_params and parameters only). configure_optimizer decays 2-D weights only: matrices and the two
    # embedding tables, not biases or LayerNorm parameters (as the Hugging Face Trainer).
    generate = Llama.generate
    flops_per_token = Llama.flops_per_token
    configure_optimizer = Llama.configure_optimizer

    def num_params(self, matmul_only=False):
        """All parameters (the tied matrix counted once), or only those that take part in matmuls: the weight
        matrices and the tied head; not the position table (a lookup), the biases or the LayerNorms (additions)."""
        if not matmul_only:
            return sum(p.numel() for p in self.parameters())
        return sum(p.numel() for name, p in self.named_parameters() if p.dim() == 2 and name != "pos_embeddings.weight")
