"""The offline chat demo: fine-tune the default model (python train.py -> out/) on synthetic conversations.

    python train.py                       # pretrain, about 10 minutes (skip if out/ holds a checkpoint)
    python train.py config/chat_demo.py   # fine-tune, about 10 minutes; prints the chat accuracy at the end
    python chat.py --ckpt=out_chat        # chat with it

The conversations come from gptkit/demo_chat.py (its "train" split): recalling one of up to three facts (a name,
colour, number, city, pet's name, password, birthday or shopping list, from open sets of values, half of them made of
random letters or of the tokenizer's word pieces) stated 0-7 turns earlier, small sums, the next day or month, and
repeating words ("Repeat after me: moon salt" -> "You said: moon salt.": the copied words written after a space, as
in the request, so as the same tokens). bench/chat_accuracy.py measures recall on values of the held-out split,
which no training conversation states. lr (the embeddings' and the output layer's AdamW rate) at 6e-3 rather than 3e-3 is what made
the output layer learn the rare tokens in time (docs/chat.md). Config files are read as data; nothing is executed.
"""
out_dir = "out_chat"
init_from = "out"
chat_data = "demo"
demo_conversations = 30000
val_fraction = 0.02
block_size = 512
optimizer = "muon"
batch_size = 32
max_iters = 450
lr = 6e-3
warmup_iters = 50
eval_interval = 250
eval_chat = 100
