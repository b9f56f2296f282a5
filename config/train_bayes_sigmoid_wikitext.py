# GPT-2 124M on WikiText-103, Bayesian sigmoid head with the GPT-2 teacher.
# torchrun --standalone --nproc_per_node=8 train_bayes_sigmoid.py config/train_bayes_sigmoid_wikitext.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "train_sigmoid_wikitext.py")).read())
out_dir = "out/bayes_sigmoid-wikitext"
variant = "bayes_sigmoid"
