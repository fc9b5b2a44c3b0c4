"""Alignment demo, a reward model on judged pairs of the fine-tuned model's own replies (python align.py pairs
--samples=4 ...: four replies per prompt, every two the judge orders differently make a pair, as InstructGPT's rankings).

    python train.py config/align_reward.py   # -> out_align_rm/ (its config says score_head: a reward model)

Config files are read as data; nothing is executed.
"""
objective = "reward"
out_dir = "out_align_rm"
init_from = "out_align_sft"
pairs = "align_demo/pairs.jsonl"
val_fraction = 0.1
block_size = 96
optimizer = "adamw"
batch_size = 16
max_iters = 200
lr = 3e-4
warmup_iters = 10
eval_interval = 100
