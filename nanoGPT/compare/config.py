"""CompareConfig: the budget every run shares (TrainConfig) plus what a comparison adds."""

from __future__ import annotations

from dataclasses import dataclass

from nanoGPT.config import TrainConfig

# the reference row (the verdicts are against it) and its controls
DEFAULT_ROWS = (
    "baseline,baseline_untied,baseline_bias,smooth,sigmoid,sigmoid+aug,distill,bayes,bayes_sigmoid+aug"
)
TEACHER_TRAINED = "train"  # teacher key: train one here (teacher_overrides), reused across comparisons


@dataclass
class CompareConfig(TrainConfig):
    """TrainConfig (the budget every student run shares) plus what the comparison adds."""

    name: str = "compare"  # the report goes to <log_dir>/<name>/
    out_dir: str = "out/compare"  # checkpoints: <out_dir>/<row>-seed<seed>/
    # rows: comma-separated VARIANT[+aug][(key=value;key=value)], e.g. smooth(label_smoothing=0.1);
    # +aug trains on the teacher's candidates (augmenter); the first row is the reference
    rows: str = DEFAULT_ROWS
    seeds: str = ""  # comma-separated training seeds, e.g. 1,2,3; "" = seed
    prepare_data: bool = True  # run data/<dataset>/prepare.py when its .bin files are missing
    jobs: int = 1  # runs trained and evaluated at once, each in its own process with one thread
    # the teacher of the +aug and distill rows, the judge of samples, the reference the students'
    # NLL is set beside: "train" = a bigger/longer model trained here on all of train.bin with
    # the shared budget plus teacher_overrides, kept in teacher_dir/<data>-<settings hash> and
    # reused by every comparison on the same data; or a hub name / ckpt:<dir> (nothing trained)
    teacher: str = TEACHER_TRAINED
    teacher_overrides: str = ""  # key=value;key=value over the shared budget (and train_fraction=1)
    teacher_dir: str = "out/teachers"
    # final evaluation: the same windows of the held-out split (test if the data has one) for
    # every run, kept per window for the paired bootstrap (nanoGPT/stats.py)
    final_eval_iters: int = 100  # batches of batch_size x block_size tokens
    bootstrap_replicates: int = 2000
    bootstrap_seed: int = 0
    # generation: every run, every prompt, the same seeds
    prompts: str = "\n"  # "|"-separated
    num_samples: int = 4  # per prompt
    sample_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 0  # 0 = off
    sample_seed: int = 0
    # probes of every run's trunk on the embedded plays (nanoGPT/compare/probes.py) beside an untrained one
    probe_examples: int = 48  # items per split and task (~0.5-1 s of CPU per run); 0 = no probes
