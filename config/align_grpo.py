"""Alignment demo, GRPO with the judge as the reward (a verifiable reward: no reward model).

    python train.py config/align_grpo.py     # -> out_align_grpo/

Config files are read as data; nothing is executed.
"""
objective = "grpo"
out_dir = "out_align_grpo"
init_from = "out_align_sft"
reward_fn = "gptkit.alignment_demo:judge"
prompts = "align_demo/prompts.jsonl"
val_fraction = 0.05
block_size = 96
max_reply_tokens = 24
optimizer = "adamw"
batch_size = 32
group_size = 8
ppo_epochs = 2
kl_coef = 0.0
max_iters = 100
lr = 5e-5
warmup_iters = 5
eval_interval = 50
eval_prompts = 64
