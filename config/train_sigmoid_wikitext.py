# GPT-2 124M on WikiText-103, sigmoid/BCE head, GPT-2 small as the augmenter's teacher (the
# original method: one random position per sequence, perplexity filter on a 64-token window).
# torchrun --standalone --nproc_per_node=8 train_sigmoid.py config/train_sigmoid_wikitext.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "train_baseline_wikitext.py")).read())
out_dir = "out/sigmoid-wikitext"
variant = "sigmoid"
augment = True
teacher = "gpt2"
augment_k = 50
augment_filter = "perplexity"
augment_threshold = 100.0
augment_window = 64
augment_positions = "one"
