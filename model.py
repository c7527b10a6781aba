"""
A small, readable Llama, shared by every script of this project.

Notable features (all the published BabyLlama / BabyLlama-2 shapes are expressible exactly):
- token embedding -> n_layers pre-norm blocks -> final RMSNorm -> output head, no biases anywhere;
- RMSNorm with a learned gain (eps 1e-6, as the released BabyLlama checkpoints);
- rotary position embeddings (RoPE, Su et al. 2021, arXiv 2104.09864), theta configurable, in the
  **half-split ("rotate_half") convention** of Hugging Face Llama: dimension i is paired with
  dimension i + head_dim/2 (not the interleaved (2i, 2i+1) pairs of meta-llama / llama2.c).
  A checkpoint trained with one convention is silently wrong under the other; tests pin ours;
- grouped-query attention: n_kv_heads may divide n_heads (BabyLlama-2: 15 query heads, 5 KV heads);
- attention through F.scaled_dot_product_attention, causal by default (flash kernel on CUDA),
  or bidirectional with causal=False (masked-LM epochs of AntLM);
- SwiGLU feed-forward w2(silu(w1 x) * w3 x), hidden size given explicitly or by the Llama rule;
- tied or untied output head; every weight initialised in one function (Llama.init_weights).

References: Llama (arXiv 2302.13971), BabyLlama (arXiv 2308.02019), BabyLlama-2 (arXiv 2409.17312).
The file imports only torch: training, distillation and evaluation scripts all build on it.
model(idx) returns next-token logits (B, T, vocab), as nanoGPT's does; model(idx, return_hidden=True) returns
the final-norm hidden states (B, T, dim) instead, for a loss that applies the output head a few sequences at a
time (chunked_loss.py) and so never holds the (B, T, vocab) logits.
"""

from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


# -----------------------------------------------------------------------------------------------
# Configuration


@dataclass
class ModelConfig:
    vocab_size: int = 16000
    dim: int = 512
    n_layers: int = 8
    n_heads: int = 8
    n_kv_heads: int = 0  # 0 = same as n_heads (plain multi-head attention)
    hidden_dim: int = 0  # SwiGLU width; 0 = Llama rule, see ffn_hidden_dim()
    multiple_of: int = 256  # Llama rule rounds the SwiGLU width up to a multiple of this
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_seq_len: int = 256  # longest sequence RoPE tables are built for (BabyLlama: 2 x 128)
    tie_embeddings: bool = False

    def __post_init__(self):
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "multiple_of", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected a positive number")
        if self.n_kv_heads < 0 or self.hidden_dim < 0:
            raise ValueError(f"n_kv_heads={self.n_kv_heads}, hidden_dim={self.hidden_dim}: expected >= 0 (0 = the default)")
        if self.n_kv_heads == 0:
            self.n_kv_heads = self.n_heads
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        if (self.dim // self.n_heads) % 2:
            raise ValueError(f"head_dim={self.dim // self.n_heads} must be even for RoPE")

    @property
    def head_dim(self):
        return self.dim // self.n_heads

    def ffn_hidden_dim(self):
        """Explicit hidden_dim, else the Llama rule: 2/3 of 4*dim, rounded up to multiple_of.
        (The rule keeps SwiGLU's three matrices at the FLOPs of a 4*dim two-matrix MLP.)"""
        if self.hidden_dim:
            return self.hidden_dim
        h = int(2 * 4 * self.dim / 3)
        return self.multiple_of * ((h + self.multiple_of - 1) // self.multiple_of)

    @classmethod
    def from_dict(cls, d):
        """Build from any dict that holds (at least) the config's fields; other keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# -----------------------------------------------------------------------------------------------
# Building blocks, bottom-up


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight (Zhang & Sennrich 2019). Computed in fp32 for stability."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_tables(head_dim, max_seq_len, theta):
    """cos and sin tables, each (max_seq_len, head_dim), for the half-split convention:
    frequency j (0 <= j < head_dim/2) rotates the pair (x[j], x[j + head_dim/2]) by angle t * theta^(-2j/head_dim)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    t = torch.arange(max_seq_len, dtype=torch.float64)
    angles = torch.outer(t, inv_freq)  # (T, head_dim/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, head_dim): both halves of a pair share an angle
    return angles.cos().float(), angles.sin().float()


def apply_rope(x, cos, sin):
    """Rotate x of shape (B, n_heads, T, head_dim) by position; cos/sin are (T, head_dim)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)  # "rotate_half": (x1, x2) -> (-x2, x1)
    return (x.float() * cos + rotated.float() * sin).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, causal):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, n_heads, T, head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv_heads, T, head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv_heads, T, head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # No attn_mask: passing one would disable the flash kernel on CUDA. Right-padded batches stay
        # exact under the causal mask (a real token never attends to the pads after it).
        # enable_gqa lets each group of n_heads/n_kv_heads query heads share one KV head without a copy.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=self.n_kv_heads != self.n_heads)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, dim)
        return self.wo(y)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.ffn_hidden_dim()
        self.w1 = nn.Linear(cfg.dim, hidden, bias=False)  # gate projection
        self.w3 = nn.Linear(cfg.dim, hidden, bias=False)  # up projection
        self.w2 = nn.Linear(hidden, cfg.dim, bias=False)  # down projection

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # SwiGLU (Shazeer 2020, arXiv 2002.05202)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x, cos, sin, causal):
        x = x + self.attention(self.attention_norm(x), cos, sin, causal)
        return x + self.feed_forward(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        # Buffers, not parameters: they move with .to(device) but are rebuilt, never saved.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self):
        """Every weight's initialisation, in one place (as Hugging Face Llama, initializer_range 0.02):
        | tensor                                  | init           |
        | tok_embeddings, output (if untied)      | N(0, 0.02)     |
        | wq, wk, wv, wo, w1, w2, w3              | N(0, 0.02)     |
        | attention_norm, ffn_norm, norm weights  | 1              |
        The RoPE tables are built in __init__ and never learned."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                nn.init.normal_(p, mean=0.0, std=0.02)

    def forward(self, idx, causal=True, return_hidden=False):
        """Next-token logits (B, T, vocab) of token ids idx (B, T); with return_hidden, the final-norm hidden states
        (B, T, dim) that the output head would turn into them."""
        B, T = idx.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds the model's max_seq_len={self.config.max_seq_len}")
        x = self.tok_embeddings(idx)  # (B, T, dim)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        for layer in self.layers:
            x = layer(x, cos, sin, causal)
        h = self.norm(x)
        return h if return_hidden else self.output(h)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=0, generator=None):
        """Continue token ids idx (B, T) by max_new_tokens tokens, one at a time: the logits of the last
        position, divided by the temperature (0 = greedy: always the most likely token), cut to the top_k
        most likely tokens (0 = all), then sampled. The context is cropped to the last max_seq_len tokens.
        No KV cache: every token runs the whole context again, simple and fast enough at these sizes."""
        for _ in range(max_new_tokens):
            context = idx[:, -self.config.max_seq_len :]  # (B, <= max_seq_len)
            logits = self(context)[:, -1, :].float()  # (B, vocab): the next token after the context
            if temperature == 0:
                next_id = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                next_id = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, next_id], dim=1)  # (B, T + 1)
        return idx

    # ----- what a trainer needs -----

    def num_params(self, matmul_only=False):
        """All parameters (a tied matrix counted once), or only those that take part in matmuls:
        the embedding lookup is excluded, the output head included (it is a matmul, tied or not)."""
        n = sum(p.numel() for p in self.parameters())
        if matmul_only:
            n -= sum(p.numel() for n_, p in self.named_parameters() if n_.endswith("norm.weight"))
            if not self.config.tie_embeddings:
                n -= self.tok_embeddings.weight.numel()
        return n

    def flops_per_token(self, seq_len, backward=True):
        """Approximate FLOPs per token: 2N forward (+4N backward) for N matmul parameters, plus the
        attention scores and weighted sum, 2 * 2 * n_layers * dim * seq_len forward (x3 with backward)
        (Kaplan et al. 2020 / PaLM appendix B). Causal masking is not discounted."""
        n = self.num_params(matmul_only=True)
        attn = 4 * self.config.n_layers * self.config.dim * seq_len
        return (6 * n + 3 * attn) if backward else (2 * n + attn)

    def configure_optimizer(self, lr, weight_decay, betas, eps):
        """AdamW with decay on 2-D weights only (matrices and embeddings); norm gains are not decayed."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)  # fused: one kernel, also on CPU (3x faster here)
