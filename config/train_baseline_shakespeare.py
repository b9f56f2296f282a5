# A CPU-sized GPT on the embedded plays in GPT-2 BPE (python data/shakespeare/prepare.py first):
# the character recipe's model and schedule, with biases, dropout and the BPE data.
import os

exec(open(os.path.join(os.path.dirname(__file__), "train_baseline_shakespeare_char.py")).read())
out_dir = "out/baseline-shakespeare"
dataset = "shakespeare"
bias = True
dropout = 0.1
sample_tokens = 64
