# A quick look at the char-level embedded Shakespeare: four rows, one seed, no +aug row (a cache
# over the 4.5M-character train.bin would cost more than the whole preset); the teacher (the
# same model, longer) only judges the samples and sets the students' NLL in context. Verdicts
# from one seed only resample windows; config/compare_shakespeare.py is the one that decides.
# Measured: 2.5 min on 2 idle cores (2026-12-01).
#   python compare.py config/compare_shakespeare_char.py
name = "compare-shakespeare-char"
out_dir = "out/compare-shakespeare-char"
dataset = "shakespeare_char"
device = "cpu"
compile = False
jobs = 2  # two one-thread processes
rows = "baseline,smooth,sigmoid,bayes"
seeds = "1"
teacher = "train"
teacher_overrides = "max_iters=300;lr_decay_iters=300"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
bias = False
dropout = 0.0
batch_size = 32
max_iters = 200
lr_decay_iters = 200
learning_rate = 5e-3
min_lr = 5e-4
warmup_iters = 20
beta2 = 0.99
eval_interval = 100
eval_iters = 10
log_interval = 100
final_eval_iters = 25
prompts = "ROMEO:|JULIET:"
num_samples = 2
sample_tokens = 150
temperature = 0.8
