"""A character-level GPT on Tiny Shakespeare (or any text file) that trains on a laptop CPU in minutes.

Get the text (1.1 MB) and train:
    curl -o shakespeare.txt https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
    python train.py config/shakespeare.py --data_path=shakespeare.txt
"""
out_dir = "out-shakespeare"
tokenizer = "bytes"  # one id per byte: characters, for English text
val_fraction = 0.1  # the last 10% of the text
preset = "modern"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
optimizer = "muon"
batch_size = 32
max_iters = 1500
lr = 3e-3
warmup_iters = 50
eval_interval = 250
eval_tokens = 0  # score the whole validation text
sample_prompt = "ROMEO:"
