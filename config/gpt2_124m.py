"""GPT-2 small (124M) on OpenWebText, the nanoGPT reproduction: a GPU job, not a laptop one.

~9B tokens of OpenWebText through the `datasets` library, GPT-2's tokenizer, ~0.5M tokens per step.
On one GPU: python train.py config/gpt2_124m.py   (data preparation alone takes a while the first time)
"""
out_dir = "out-gpt2-124m"
dataset = "Skylion007/openwebtext"
tokenizer = "gpt2"
val_fraction = 0.0005
preset = "gpt2"
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
optimizer = "adamw"
batch_size = 16
grad_accum = 32  # 16 x 1024 x 32 = 524,288 tokens per step
max_iters = 600000
lr = 6e-4
weight_decay = 0.1
beta2 = 0.95
warmup_iters = 2000
min_lr_frac = 0.1
eval_interval = 1000
eval_tokens = 1048576
log_interval = 10
compile = True
sample_prompt = "The meaning of life is"
