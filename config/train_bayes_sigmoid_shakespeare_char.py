# Bayesian sigmoid head with the augmenter (train the baseline teacher first, see
# config/train_sigmoid_shakespeare_char.py):
#   python train_bayes_sigmoid.py config/train_bayes_sigmoid_shakespeare_char.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "train_sigmoid_shakespeare_char.py")).read())
out_dir = "out/bayes_sigmoid-shakespeare-char"
variant = "bayes_sigmoid"
