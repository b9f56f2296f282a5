# GPT-2 124M on WikiText-103 with the 'smooth' objective (see config/train_baseline_wikitext.py):
# torchrun --standalone --nproc_per_node=8 train_smooth.py config/train_smooth_wikitext.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "train_baseline_wikitext.py")).read())
out_dir = "out/smooth-wikitext"
variant = "smooth"
