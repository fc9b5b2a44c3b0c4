"""The fastest config found for bench/time_to_quality.py: Shakespeare to 2.72 bits/byte on 2 CPU cores in seconds.

A 2-layer, 128-wide modern GPT (rotary positions, RMSNorm, QK-norm, ReLU², untied head) over a 1,024-token BPE
(about 2.4 bytes per token, so each step sees more text than a character model's), Muon for the block matrices,
a short warmup and a cosine decay over a short run. nanoGPT's CPU "baby GPT" takes 147 s to reach 2.72 here.

    python bench/time_to_quality.py        # prepares the 90/10 split, trains with this config, prints the curve
"""
out_dir = "out_speedrun"
tokenizer = "bpe"
vocab_size = 1024
preset = "modern"
n_layer = 2
n_head = 4
n_embd = 128
block_size = 128
optimizer = "muon"
batch_size = 32
max_iters = 80
lr = 6e-3
muon_lr = 0.04
warmup_iters = 10
eval_interval = 20
eval_tokens = 0
log_interval = 20
sample_tokens = 0
