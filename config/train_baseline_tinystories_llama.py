# A small LLaMA-2-style story model on TinyStories with its own 4096-piece SentencePiece
# vocabulary. Prepare the data first (trains the tokenizer on the training stories):
#   python data/tinystories/prepare.py --tokenizer=sp --vocab_size=4096
#   python train_baseline.py config/train_baseline_tinystories_llama.py
# Any other variant trains the same trunk: python train_sigmoid.py <this file> (and so on).
out_dir = "out/baseline-tinystories-llama"
dataset = "tinystories"
sample_prompt = "Once upon a time"
# the trunk: 8 layers, 8 heads, 256 wide, RMSNorm, SwiGLU, rotary positions, no biases
n_layer = 8
n_head = 8
n_embd = 256
block_size = 128
vocab_size = 4096  # the model takes the data's exact vocabulary; this is what prepare writes
norm = "rmsnorm"
mlp = "swiglu"
pos_emb = "rope"
bias = False
dropout = 0.0
# 64 x 128 x 4 = 32k tokens per iteration
batch_size = 64
gradient_accumulation_steps = 4
learning_rate = 5e-4
max_iters = 20000
lr_decay_iters = 20000
min_lr = 5e-5
warmup_iters = 1000
weight_decay = 0.1
beta2 = 0.95
eval_interval = 1000
eval_iters = 100
log_interval = 10
sample_interval = 1000
sample_tokens = 200
dtype = "bfloat16"
compile = True
