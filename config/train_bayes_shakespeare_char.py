# Bayesian last layer on the baseline's CPU recipe:
#   python train_bayes.py config/train_bayes_shakespeare_char.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "train_baseline_shakespeare_char.py")).read())
out_dir = "out/bayes-shakespeare-char"
variant = "bayes"
kl_weight = 1.0
bayes_samples = 8
