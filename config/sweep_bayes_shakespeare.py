# The sweep behind the Bayesian heads' defaults (prior_sigma, posterior_sigma_scale): the default
# comparison's students and data (config/compare_shakespeare.py), one seed, Bayesian rows only,
# read against the untied softmax head they share their shape with. Its report has each row's
# held-out NLL, mutual information on held-out and shifted text, OOD AUROCs and sigma's path.
#   python compare.py config/sweep_bayes_shakespeare.py
import os

exec(open(os.path.join(os.path.dirname(__file__), "compare_shakespeare.py")).read())

name = "sweep-bayes-shakespeare"
out_dir = "out/sweep-bayes-shakespeare"
teacher = ""  # no +aug rows: nothing to train a teacher for
seeds = "1"
# the students' budget when the sweep was made (the default comparison has since moved to 150)
max_iters = 200
lr_decay_iters = 200
warmup_iters = 20
eval_interval = 50
eval_iters = 10
log_interval = 100
final_eval_iters = 40
rows = ",".join(
    [
        "baseline_untied",
        "bayes(prior_sigma=1.0;posterior_sigma_scale=1)",  # sigma barely moves: the old head
        "bayes(prior_sigma=1.0;posterior_sigma_scale=10)",
        "bayes(prior_sigma=0.1;posterior_sigma_scale=3)",
        "bayes(prior_sigma=0.1;posterior_sigma_scale=10)",
        "bayes(prior_sigma=0.1;posterior_sigma_scale=30)",
        "bayes(prior_sigma=0.05;posterior_sigma_scale=10)",
        "bayes(prior_sigma=0.1;posterior_sigma_scale=10;max_iters=400;lr_decay_iters=400)",
    ]
)
