# GPUs: compare the five objectives with GPT-2 124M on WikiText-103, trained from scratch;
# the multi-hot variants get their extra positives from the pretrained GPT-2 teacher.
#   python data/wikitext/prepare.py
#   python compare.py config/compare_wikitext.py --seeds=1,2,3
# Rows whose variant is not registered (distill, the baseline controls) are skipped.
# Evaluation is on WikiText-103's own test split (never seen in training or model selection),
# in bits per byte as well as per token. compare.py runs one process: for several GPUs per
# run, train each run with torchrun train_<variant>.py into out/compare-wikitext/<variant>-seed<N>
# with this budget, then compare.py reuses the checkpoints.
name = "compare-wikitext"
out_dir = "out/compare-wikitext"
dataset = "wikitext"
device = "cuda"
dtype = "bfloat16"
compile = True
# GPT-2 small (124M)
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024
bias = True
dropout = 0.0
# the budget of every run: 16 x 8 x 1024 = 131k tokens/iter, 5000 iters = 655M tokens
batch_size = 16
gradient_accumulation_steps = 8
max_iters = 5000
lr_decay_iters = 5000
learning_rate = 6e-4
min_lr = 6e-5
warmup_iters = 200
weight_decay = 0.1
beta2 = 0.95
eval_interval = 500
eval_iters = 50
log_interval = 50
# augmenter: GPT-2's top 50 candidates, kept below perplexity 100 in a 64-token window
rows = "baseline,baseline_untied,baseline_bias,smooth,sigmoid,sigmoid+aug,distill,bayes,bayes_sigmoid+aug"
teacher = "gpt2"  # pretrained: nothing to train
# the whole test split (~280k tokens, 1024-token windows) once
final_eval_iters = 100
prompts = "The history of the|In 1998, the band|The film was released|He was born in"
num_samples = 4
sample_tokens = 200
temperature = 0.8
