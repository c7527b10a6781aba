# A tiny student distilled on CPU from the two tiny teachers (configs/tiny_teacher1.py, tiny_teacher2.py).
#   python distill.py configs/tiny_student.py
data_dir = "data/mini"
out_dir = "out/tiny_student"
teachers = ["out/tiny_teacher1/ckpt.pt", "out/tiny_teacher2/ckpt.pt"]
dim = 128
n_layers = 4
n_heads = 4
n_kv_heads = 2
hidden_dim = 384
alpha = 0.5
temperature = 1.0
ensemble = "logits"
kl_reduction = "paper"
seq_len = 128
batch_size = 32
micro_batch_size = 32
max_iters = 200
warmup_iters = 20
lr = 3e-3
min_lr = 3e-4
weight_decay = 0.1
eval_interval = 50
eval_windows = 256
log_interval = 20
seed = 3
