# Trunks instead of objectives: GPT-2, the convolution compressor (arch=conv) and progressive
# diverging (progressive_group) on the char-level embedded Shakespeare, one objective (baseline),
# the same budget and yardstick as config/compare_shakespeare_char.py (whose teacher, the judge of
# the samples, it shares and reuses). report.md adds a trunk table: heads, width, micro-batch,
# context, parameters, ms/iter, final training loss, test NLL, inference ms/token (KV cache);
# loss.png has every row's curves. Two seeds: mean ± std and paired verdicts against GPT-2.
#   python compare.py config/compare_archs_shakespeare_char.py
name = "compare-archs-shakespeare-char"
out_dir = "out/compare-archs-shakespeare-char"
dataset = "shakespeare_char"
device = "cpu"
compile = False
jobs = 2  # two one-thread processes
rows = "baseline,baseline(arch=conv),baseline(progressive_group=2)"
seeds = "1,2"
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
eval_interval = 50  # loss.png: five points per curve
eval_iters = 10
log_interval = 10
final_eval_iters = 25
prompts = "ROMEO:|JULIET:"
num_samples = 2
sample_tokens = 150
temperature = 0.8
