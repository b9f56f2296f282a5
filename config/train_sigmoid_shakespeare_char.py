# Sigmoid/BCE with multi-hot targets on the baseline's CPU recipe. The teacher is a baseline
# trained first: python train_baseline.py config/train_baseline_shakespeare_char.py
#             python train_sigmoid.py config/train_sigmoid_shakespeare_char.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "train_baseline_shakespeare_char.py")).read())
out_dir = "out/sigmoid-shakespeare-char"
variant = "sigmoid"
augment = True
teacher = "ckpt:out/baseline-shakespeare-char"
augment_k = 8
augment_filter = "prob"  # keep the teacher's top-8 characters that are at least 5% likely
augment_min_prob = 0.05
augment_positions = "all"
