# nanoGPT's documented CPU recipe for the character-level Shakespeare model.
# python train_baseline.py config/train_baseline_shakespeare_char.py
out_dir = "out/baseline-shakespeare-char"
dataset = "shakespeare_char"
device = "cpu"
compile = False
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
batch_size = 12
dropout = 0.0
bias = False
learning_rate = 1e-3
max_iters = 2000
lr_decay_iters = 2000
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
eval_interval = 250
eval_iters = 20
log_interval = 50
sample_interval = 500
sample_prompt = "ROMEO:"
sample_tokens = 200
