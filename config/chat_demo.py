"""The offline chat demo: fine-tune the default model (python train.py -> out/) on synthetic conversations.

    python train.py                       # pretrain, about 5 minutes (skip if out/ holds a checkpoint)
    python train.py config/chat_demo.py   # fine-tune, about 10 minutes; prints the chat accuracy at the end
    python chat.py --ckpt=out_chat        # chat with it

The conversations come from gptkit/demo_chat.py: recalling a name, colour, number or city stated turns earlier,
small sums, the next day or month, and repeating words. Config files are read as data; nothing is executed.
"""
out_dir = "out_chat"
init_from = "out"
chat_data = "demo"
demo_conversations = 30000
val_fraction = 0.02
block_size = 256
optimizer = "muon"
batch_size = 32
max_iters = 500
lr = 3e-3
warmup_iters = 50
eval_interval = 250
eval_chat = 300
