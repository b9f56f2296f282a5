# The default comparison: which output objective wins on the embedded Shakespeare plays, in
# SentencePiece pieces (2048, trained on the train split), decided by 3 seeds and paired
# bootstrap verdicts. Measured wall time: see the report (python compare.py config/compare_shakespeare.py).
#
# - a teacher (4 layers x 128, all of train.bin, 2.7x the students' tokens: ~5x their compute) is
#   trained once and kept in out/teachers/;
#   it supplies the +aug rows' extra positives and distill's targets, and judges the samples
# - students (3 x 96) train data-limited: the first 10% of train.bin for several epochs, so
#   the teacher knows clearly more than any student could learn from their data
# - two runs at a time, each its own process with one torch thread
name = "compare-shakespeare"
out_dir = "out/compare-shakespeare"
dataset = "shakespeare_sp"
device = "cpu"
compile = False
jobs = 2
rows = "baseline,baseline_untied,baseline_bias,smooth,sigmoid,sigmoid+aug,distill,bayes,bayes_sigmoid+aug"
seeds = "1,2,3"
# the students' model and budget
n_layer = 3
n_head = 4
n_embd = 96
block_size = 64
bias = False
dropout = 0.0
batch_size = 32
train_fraction = 0.1
max_iters = 150
lr_decay_iters = 150
learning_rate = 5e-3
min_lr = 5e-4
warmup_iters = 15
beta2 = 0.99
eval_interval = 75  # best.pt is chosen on val at 75 and 150
eval_iters = 6
log_interval = 25
# the teacher: wider, deeper, all of train.bin, longer
teacher = "train"
teacher_overrides = "n_layer=4;n_embd=128;max_iters=400;lr_decay_iters=400;warmup_iters=40;eval_interval=200"
# augmenter (+aug rows, distill), read from a cache the teacher fills once: the teacher's top 8
# next pieces at every position, kept when at least 5% likely
augment_source = "cache"
augment_positions = "all"
augment_k = 8
augment_filter = "prob"
augment_min_prob = 0.05
# the same 800 windows of 64 pieces of test for every run
final_eval_iters = 25
prompts = "ROMEO:|JULIET:|First Citizen:"
num_samples = 2
sample_tokens = 100
temperature = 0.8
