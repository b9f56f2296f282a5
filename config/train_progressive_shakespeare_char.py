# Progressive diverging on the baseline's CPU recipe, as the source trains it: stage 1 runs the
# four layers through one shared block, stage 2 (from 30% of max_iters) through two (attention
# through LoRA), stage 3 (from 60%) gives every layer its own block, its attention still through
# LoRA (progressive_stage3_lora). Each switch is logged with its number of trainable parameters.
# python train_baseline.py config/train_progressive_shakespeare_char.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "train_baseline_shakespeare_char.py")).read())
out_dir = "out/progressive-shakespeare-char"
progressive_group = 4  # n_layer = 4: one group
progressive_stage2 = 0.3
progressive_stage3 = 0.6
progressive_stage3_lora = True
lora_rank = 4
lora_alpha = 8.0
