# Distillation from the same teacher as sigmoid, on the baseline's CPU recipe: cross-entropy
# against 0.5 * onehot(true) + 0.5 * the teacher's top-8 distribution. The teacher is a baseline
# trained first: python train_baseline.py config/train_baseline_shakespeare_char.py
#                python train_distill.py config/train_distill_shakespeare_char.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "train_baseline_shakespeare_char.py")).read())
out_dir = "out/distill-shakespeare-char"
variant = "distill"
augment = True
teacher = "ckpt:out/baseline-shakespeare-char"
augment_k = 8
augment_filter = "none"  # the teacher's top-8 characters, renormalised over those 8
augment_positions = "all"  # distill needs the teacher's distribution at every position
distill_alpha = 0.5
distill_temperature = 1.0
