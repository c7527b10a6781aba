# BabyLlama's GPT-2 705M teacher (arXiv 2308.02019; config/gpt-705M.yaml and train.py of github.com/timinar/BabyLlama,
# which build a Hugging Face GPT2LMHeadModel with n_positions = 2 x seq_len and GPT2Config's defaults otherwise).
#   torchrun --nproc_per_node=8 train_teacher.py configs/teacher_gpt2_705m.py
# (The repository's older train-gpt-705M.py differs: 128 positions, batch 256, 6 epochs, warmup 200.)
data_dir = "data/babylm10m"
out_dir = "out/teacher_gpt2_705m"
arch = "gpt2"  # gpt2.py: learned positions, LayerNorm, GELU MLP of 4 x dim, biases, tied head, dropout 0.1
dim = 1536
n_layers = 24
n_heads = 16  # head_dim 96
norm_eps = 1e-5  # GPT2Config's layer_norm_epsilon
max_seq_len = 256  # n_positions = 2 x seq_len: 256 learned position vectors
# params: 16,000 x 1,536 (tied) + 256 x 1,536 + 24 x (12 x 1,536^2 + 13 x 1,536) + 2 x 1,536 = 704,928,768
seq_len = 128
batch_size = 128
micro_batch_size = 16
epochs = 4.0
lr = 2.5e-4
min_lr = 0.0
warmup_iters = 300
weight_decay = 0.0  # not set in the BabyLlama teacher recipe (the HF Trainer's default: 0)
eval_interval = 200
eval_windows = 8192  # BabyLlama validated on 8,192 windows of 128 tokens
seed = 705
