# The BabyLM 2025 fine-tuning protocol: github.com/babylm/evaluation-pipeline-2025 (eval_finetuning.sh and
# evaluation_pipeline/finetune/run.py), BabyLM 2025 call (arXiv 2502.10645).
#   python eval_superglue.py configs/superglue_babylm2025.py --ckpt out/student/ckpt.pt --data ../shared/data/glue_filtered
# Seven tasks: CoLA, SST-2, MNLI-mm and QNLI were dropped (highly correlated with the others), MNLI and QQP train
# on 10k-example subsamples. A task whose training file is missing is skipped with a note (../shared/data has no
# BoolQ or MultiRC training file).
task = "boolq,multirc,rte,wsc,mrpc,qqp,mnli"
subsample_2025 = True  # mnli/qqp.train.2025subsample.jsonl, even beside a full training file
lr = 3e-5
batch_size = 32
epochs = 10
patience = 10  # the pipeline has no early stopping: every epoch runs and the best one is kept
weight_decay = 0.01  # the pipeline's default (run.py)
seed = 42
max_len = 512  # the pipeline's sequence_length; capped at the model's max_seq_len (BabyLlama, the tiny configs: 256)
selection = "metric"  # the best epoch by the task's metric (metric_for_valid: accuracy, F1 for MRPC and QQP)
task_overrides = {
    "boolq": dict(batch_size=16),  # eval_finetuning.sh gives BoolQ and MultiRC its BIG_BSZ, 16
    "multirc": dict(batch_size=16),
    "wsc": dict(epochs=30, patience=30),
}
# Not reproduced (this project's fine-tuning is the 2024 pipeline's, see eval_superglue.py): the 2025 pipeline's
# 6% linear warmup and cosine decay to 0.1 x lr (here linear decay to 0, no warmup), its classifier head (an MLP
# with dropout 0.1; here one linear layer on the last token) and its pooling. Scores are therefore this
# project's reading of the 2025 settings, not the official fine-tuning numbers: run eval_finetuning.sh on the
# exported model for those (README: Submitting to BabyLM).
