# GPT-2 124M on WikiText-103 with the 'bayes' objective (see config/train_baseline_wikitext.py):
# torchrun --standalone --nproc_per_node=8 train_bayes.py config/train_bayes_wikitext.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "train_baseline_wikitext.py")).read())
out_dir = "out/bayes-wikitext"
variant = "bayes"
