# Label smoothing on the baseline's CPU recipe: python train_smooth.py config/train_smooth_shakespeare_char.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "train_baseline_shakespeare_char.py")).read())
out_dir = "out/smooth-shakespeare-char"
variant = "smooth"
label_smoothing = 0.05
