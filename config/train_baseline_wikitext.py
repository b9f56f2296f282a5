# GPT-2 124M on WikiText-103 (python data/wikitext/prepare.py first). For 8 GPUs:
# torchrun --standalone --nproc_per_node=8 train_baseline.py config/train_baseline_wikitext.py
out_dir = "out/baseline-wikitext"
dataset = "wikitext"
eval_split = "val"  # the final numbers: --eval_only=True --eval_split=test --init_from=resume
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
dropout = 0.0
batch_size = 12
gradient_accumulation_steps = 40  # 12 x 1024 x 40 = ~0.5M tokens per iteration
learning_rate = 6e-4
max_iters = 20000
lr_decay_iters = 20000
min_lr = 6e-5
warmup_iters = 2000
weight_decay = 0.1
beta2 = 0.95
eval_interval = 1000
eval_iters = 200
log_interval = 10
dtype = "bfloat16"
compile = True
wandb_log = False
