"""Alignment demo, PPO against the learned reward model, with a KL penalty to the fine-tuned model.

    python train.py config/align_ppo.py      # -> out_align_ppo/

Config files are read as data; nothing is executed.
"""
objective = "ppo"
out_dir = "out_align_ppo"
init_from = "out_align_sft"
reward_model = "out_align_rm"
prompts = "align_demo/prompts.jsonl"
val_fraction = 0.05
block_size = 96
max_reply_tokens = 24
optimizer = "adamw"
batch_size = 32
ppo_epochs = 2
kl_coef = 0.05
critic_lr = 1e-4
max_iters = 100
lr = 5e-5
warmup_iters = 5
eval_interval = 50
eval_prompts = 64
