"""What `python train.py` runs: a small modern GPT on the built-in corpus (Python's standard library source).

About 10 minutes on 2 CPU cores; the sample it prints at the end reads like Python.
Config files are read as data: only `name = value` lines, nothing is executed.
"""
out_dir = "out"
tokenizer = "bpe"
vocab_size = 4096
preset = "modern"
n_layer = 4
n_head = 4
n_embd = 256
block_size = 128
optimizer = "muon"
batch_size = 32
max_iters = 400
lr = 3e-3
warmup_iters = 50
eval_interval = 100
sample_prompt = "def "
