# The source's convolution compressor on the maths data: three levels of factor 4 (the
# sequence shortens 4x and widens 2x per level), and every position learns the token
# conv_factor ** conv_levels = 64 positions ahead (predict_ahead = 0: auto), so the compressed
# levels must carry whole operands and results rather than the next character.
# Data: python data/math/prepare.py --sources=arithmetic --tokenizer=char   (offline, 1.85M characters
#       of "a+b=c" lines; or maths text from the hub: --sources=college --tokenizer=sp --vocab_size=1024)
# Run:  python train_baseline.py config/train_conv_math.py   (600 iterations, ~0.6 s each on one core)
# A look-ahead model does not generate text: sample.py refuses it, and sample_interval stays 0.
out_dir = "out/conv-math"
dataset = "math"
device = "cpu"
compile = False
arch = "conv"
conv_factor = 4
conv_levels = 3
predict_ahead = 0  # auto: 4 ** 3 = 64 tokens ahead
n_layer = 7  # a block before and after each of the 3 levels, one at the bottom
n_head = 2
n_embd = 64  # 64, 128, 256, 512 wide at levels 0..3
block_size = 256  # 4 positions at the bottom level
batch_size = 8
dropout = 0.0
bias = False
learning_rate = 1e-3
max_iters = 600
lr_decay_iters = 600
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 50
eval_interval = 100
eval_iters = 10
log_interval = 20
