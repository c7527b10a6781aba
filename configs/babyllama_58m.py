# BabyLlama (arXiv 2308.02019): the 58M student distilled from a heterogeneous ensemble, a Llama 360M and a
# GPT-2 705M (the order of the paper's script; the mean of logits does not depend on it):
#   torchrun --nproc_per_node=8 train_teacher.py configs/teacher_llama_360m.py
#   torchrun --nproc_per_node=8 train_teacher.py configs/teacher_gpt2_705m.py
#   python distill.py configs/babyllama_58m.py
# Two Llama teachers instead: --teachers=out/llama360m_a/ckpt.pt,out/llama360m_b/ckpt.pt (two seeds of the 360M).
data_dir = "data/babylm10m"
out_dir = "out/babyllama_58m"
teachers = ["out/teacher_llama_360m/ckpt.pt", "out/teacher_gpt2_705m/ckpt.pt"]
dim = 512
n_layers = 16
n_heads = 8  # head_dim 64
hidden_dim = 1024  # 2 x dim
max_seq_len = 256
# params: 2 x 16,000 x 512 + 16 x (4 x 512^2 + 3 x 512 x 1,024 + 2 x 512) + 512 = 58,343,936
alpha = 0.5
temperature = 2.0
ensemble = "logits"
kl_reduction = "paper"  # KL:CE per-token weight (1-alpha) T^2 128 / alpha = 512:1, as published
seq_len = 128
batch_size = 32  # 4,096 tokens per step, no accumulation
micro_batch_size = 32
epochs = 6.0
lr = 2.5e-4
min_lr = 0.0
warmup_iters = 200
weight_decay = 0.1
grad_clip = 1.0
eval_interval = 500
eval_windows = 8192
seed = 58
