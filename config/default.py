"""What `python train.py` runs: a small modern GPT on the built-in corpus (Python's standard library source).

Config files are read as data: only `name = value` lines, nothing is executed.
"""
out_dir = "out"
tokenizer = "bpe"
vocab_size = 4096
preset = "modern"
n_layer = 4
n_head = 4
n_embd = 256
block_size = 256
optimizer = "muon"
batch_size = 16
max_iters = 1000
eval_interval = 250
sample_prompt = "def "
