"""nanoGPT's A100 result on Shakespeare in the A100's three minutes, on 2 CPU cores: bench/time_to_quality.py's config
for 2.12 bits/byte (the best validation loss of nanoGPT's character model, 1.4697 nats per character).

A 3-layer, 128-wide modern GPT (rotary positions, RMSNorm, QK-norm, ReLU², untied head) over a 1,024-token BPE
(about 2.4 bytes per token). What mattered, each measured in bench/time_to_quality.py (docs/performance.md):
- batches of 16 x 128 tokens: twice the steps of 32 x 128 in the same time, and better for it; 8 x 128 was worse;
- weight decay 0.3 on the matrices: the regulariser that pays at 1 MB of text (2.131 -> 2.108 bits/byte at 0.1 -> 0.3);
  dropout 0.1 cost more in speed and learning than it gave back;
- 3 layers, not 4 or 5: the extra steps are worth more than the depth;
- Muon for the block matrices, a cosine decay to zero.

    python bench/time_to_quality.py config/shakespeare_2min.py --target=2.12
"""
out_dir = "out_shakespeare_2min"
tokenizer = "bpe"
vocab_size = 1024
preset = "modern"
n_layer = 3
n_head = 4
n_embd = 128
block_size = 128
optimizer = "muon"
batch_size = 16
max_iters = 960
lr = 4e-3
muon_lr = 0.03
weight_decay = 0.3
warmup_iters = 50
min_lr_frac = 0.0
eval_interval = 320
eval_tokens = 0
log_interval = 40
sample_tokens = 0
