# A tiny GPT-2 teacher for the README's CPU walk-through of the 2023 recipe: tiny_teacher1.py's width, depth,
# data, steps and schedule with BabyLlama's other architecture (gpt2.py; GPT-2 705M in the paper).
# Prepare the data first: python prepare_data.py --src ../shared/data/babylm_2024_mini --out data/mini
data_dir = "data/mini"
out_dir = "out/tiny_gpt2_teacher"
arch = "gpt2"
dim = 128
n_layers = 4
n_heads = 4
norm_eps = 1e-5
# params: 16,000 x 128 (tied) + 256 x 128 + 4 x (12 x 128^2 + 13 x 128) + 2 x 128 = 2,874,112
seq_len = 128
batch_size = 32  # 4,096 tokens per step; one epoch of data/mini is ~1,050 steps
micro_batch_size = 32
max_iters = 200
warmup_iters = 20
lr = 3e-3
min_lr = 3e-4
weight_decay = 0.1
eval_interval = 50
eval_windows = 256
log_interval = 20
seed = 4
