# BabyLlama (arXiv 2308.02019): the 58M student distilled from two teachers.
# The paper's teachers were a GPT-2 705M and a Llama 360M; this project is Llama-only, so use two Llama
# teachers, e.g. configs/teacher_llama_360m.py trained with two seeds:
#   torchrun --nproc_per_node=8 train_teacher.py configs/teacher_llama_360m.py --out_dir=out/llama360m_a --seed=1
#   torchrun --nproc_per_node=8 train_teacher.py configs/teacher_llama_360m.py --out_dir=out/llama360m_b --seed=2
#   python distill.py configs/babyllama_58m.py
data_dir = "data/babylm10m"
out_dir = "out/babyllama_58m"
teachers = ["out/llama360m_a/ckpt.pt", "out/llama360m_b/ckpt.pt"]
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
