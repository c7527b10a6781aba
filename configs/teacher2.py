# BabyLlama-2 teacher 2 (arXiv 2409.17312): "SmolLlama-345M", the same architecture as its student.
#   python prepare_data.py --out data/babylm10m            # BabyLM 2024 strict-small, BPE 16k
#   torchrun --nproc_per_node=8 train_teacher.py configs/teacher2.py
data_dir = "data/babylm10m"
out_dir = "out/teacher2"
dim = 960
n_layers = 32
n_heads = 15  # head_dim 64
n_kv_heads = 5  # grouped-query attention: 3 query heads share each KV head
hidden_dim = 2560  # = 8/3 * 960
max_seq_len = 256  # 2 x seq_len, as the published config
# params: 2 x 16,000 x 960 (untied embedding + head) + 32 x (attention 2,457,600 + SwiGLU 7,372,800 + 2 x 960 norms)
#       + 960 final norm = 345,355,200
seq_len = 128
batch_size = 128  # 16,384 tokens per step (the paper: 32 per device x 4 accumulation steps)
micro_batch_size = 32
epochs = 8.0  # ~9.5M words x ~1.45 tokens/word / 16,384 = ~840 steps per epoch, ~6.7k steps
lr = 7e-4
min_lr = 0.0  # cosine to zero, as the HF Trainer
warmup_iters = 600
weight_decay = 5.0  # BabyLlama-2's hyperparameter sweep settled in a high-weight-decay region (arXiv 2409.17312)
grad_clip = 1.0
eval_interval = 200
eval_windows = 8192  # the whole validation split (~5,500 windows) is used when it is smaller
seed = 2  # the only difference from teacher1.py: initialisation and data order
