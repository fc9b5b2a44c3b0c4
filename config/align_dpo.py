"""Alignment demo, DPO on the judged pairs, the fine-tuned model as the reference.

    python train.py config/align_dpo.py      # -> out_align_dpo/

Config files are read as data; nothing is executed.
"""
objective = "dpo"
out_dir = "out_align_dpo"
init_from = "out_align_sft"
pairs = "align_demo/pairs.jsonl"
beta = 0.1
val_fraction = 0.1
block_size = 96
optimizer = "adamw"
batch_size = 16
max_iters = 100
lr = 1e-4
warmup_iters = 10
eval_interval = 50
