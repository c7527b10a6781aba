# A tiny Llama teacher for the README's CPU walk-through (its table gives the measured times).
# Prepare the data first: python prepare_data.py --src ../shared/data/babylm_2024_mini --out data/mini
data_dir = "data/mini"
out_dir = "out/tiny_teacher2"
dim = 160
n_layers = 4
n_heads = 4  # head_dim 40 in teacher 2
n_kv_heads = 2  # grouped-query attention, as BabyLlama-2 (2 query heads per KV head)
hidden_dim = 480  # 3 x dim
# a slightly wider second teacher (dim 160): the ensemble gains from teachers that differ
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
seed = 2
