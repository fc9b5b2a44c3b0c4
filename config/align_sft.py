"""Alignment demo, stage 1: fine-tune the default model (python train.py -> out/) on the demo's conversations.

    python data/alignment_demo.py            # writes align_demo/ (sft.jsonl, prompts.jsonl, heldout.jsonl)
    python train.py config/align_sft.py      # -> out_align_sft/

The replies it learns from are mostly chatty ("Sure! ..."), so it answers correctly but seldom plainly: the room the
feedback stages (config/align_*.py, docs/alignment.md) then close. Config files are read as data; nothing is executed.
"""
out_dir = "out_align_sft"
init_from = "out"
chat_data = "align_demo/sft.jsonl"
val_fraction = 0.02
block_size = 96
optimizer = "muon"
batch_size = 32
max_iters = 600
lr = 3e-3
warmup_iters = 30
eval_interval = 300
sample_tokens = 0
