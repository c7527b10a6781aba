# BabyLlama-2's per-task fine-tuning settings (from the authors' sweeps; BabyLlama-2, arXiv 2409.17312, appendix).
#   python eval_superglue.py configs/superglue_babyllama2.py --ckpt out/student/ckpt.pt --task all --data path/to/glue_filtered
# Keys not set here keep the BabyLM 2024 defaults (lr 5e-5, batch 64, 10 epochs, patience 3, seed 12).
# The sweeps' schedulers (cosine/constant) and warmup are not reproduced: every task decays linearly.
task_overrides = {
    "boolq": dict(lr=2e-5, batch_size=8, epochs=1, patience=2, weight_decay=0.1),
    "cola": dict(lr=1e-5, batch_size=32, epochs=10, patience=11, weight_decay=0.15),
    "mnli": dict(lr=1e-5, batch_size=32, epochs=2, patience=3, weight_decay=1.0),
    "mrpc": dict(lr=1e-5, batch_size=1, epochs=2, patience=3, weight_decay=2.0),
    "multirc": dict(lr=1e-5, batch_size=8, epochs=2, patience=3, weight_decay=2.0),
    "qnli": dict(lr=5e-6, batch_size=32, epochs=2, patience=3, weight_decay=0.3),
    "qqp": dict(lr=4.5e-6, batch_size=32, epochs=6, patience=7, weight_decay=2.0),
    "rte": dict(lr=1e-5, batch_size=2, epochs=2, patience=3, weight_decay=10.0),
    "sst2": dict(lr=2e-6, batch_size=24, epochs=2, patience=3, weight_decay=5.0),
    "wsc": dict(lr=2e-6, batch_size=1, epochs=24, patience=25, weight_decay=0.4),
}
