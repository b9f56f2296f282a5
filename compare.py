"""Which output objective wins? Train every variant on one budget, measure them on one yardstick.

    python compare.py config/compare_shakespeare.py          # offline default, ~10 min, 2 cores
    python compare.py config/compare_shakespeare.py --variants=baseline,smooth --max_iters=100
    python compare.py config/compare_wikitext.py             # GPUs: GPT-2 124M on WikiText-103

For each variant x seed it trains a run through the one loop (nanoGPT/train.py) with the same
model, data, iterations and tokens; the multi-hot variants (sigmoid, bayes_sigmoid) train with
the augmenter, whose teacher is by default this comparison's own baseline run. Then every
final checkpoint is evaluated on the held-out split (test if the data has one, else val) over
the same fixed windows, samples are drawn from fixed prompts with fixed seeds, and
training_logs/<name>/ gets report.md (one table, mean ± std over seeds, best values in bold),
results.json, loss.png, reliability.png, samples.md and samples.png.

A rerun reuses every finished checkpoint (and its cached evaluation) and resumes an
interrupted run from its last checkpoint, so an interrupted comparison continues where it
stopped. Checkpoints live in <out_dir>/<variant>-seed<seed>/.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch

from nanoGPT.atomic import atomic_write_json
from nanoGPT.checkpoint import checkpoint_path, find_resume_checkpoint, load_model, warn
from nanoGPT.config import TrainConfig, apply_config
from nanoGPT.data import TokenData, resolve_data_dir
from nanoGPT.errors import UserError, cli
from nanoGPT.evaluate import evaluate
from nanoGPT.metrics import MetricAccumulator
from nanoGPT.model import GPT
from nanoGPT.plotting import plot_loss_curves, plot_reliability, plot_samples, read_metrics
from nanoGPT.runtime import Runtime, seeded, setup_runtime
from nanoGPT.sampling import generate
from nanoGPT.text_metrics import distinct_n, self_bleu
from nanoGPT.tokenizer import Tokenizer, load_tokenizer
from nanoGPT.train import train
from nanoGPT.variants import VARIANTS

REFERENCE = "baseline"  # always trained: the reference row, the judge of samples, the teacher
TEACHER_FROM_BASELINE = "baseline"
EVAL_CACHE = "compare_eval.json"
TRAIN_TIME = "compare_train.json"  # seconds spent training the run, over all invocations


@dataclass
class CompareConfig(TrainConfig):
    """TrainConfig (the budget every run shares) plus what the comparison adds."""

    name: str = "compare"  # the report goes to <log_dir>/<name>/
    out_dir: str = "out/compare"  # checkpoints: <out_dir>/<variant>-seed<seed>/
    variants: str = ",".join(VARIANTS)  # comma-separated; baseline is always included
    seeds: str = ""  # comma-separated training seeds, e.g. 1,2,3; "" = seed
    prepare_data: bool = True  # run data/<dataset>/prepare.py when its .bin files are missing
    # augmenter for the multi-hot variants; teacher "baseline" = the first seed's baseline run
    augment: bool = True
    teacher: str = TEACHER_FROM_BASELINE
    # final evaluation: the same windows of the held-out split for every run
    final_eval_iters: int = 100  # batches of batch_size x block_size tokens
    # generation: every run, every prompt, the same seeds
    prompts: str = "\n"  # "|"-separated
    num_samples: int = 4  # per prompt
    sample_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 0  # 0 = off
    sample_seed: int = 0


@dataclass(frozen=True)
class Column:
    key: str  # the metric's name in results.json
    header: str
    better: str  # "lower", "higher", or "" (no best value: a description, not a score)
    about: str


COLUMNS = [
    Column("nll", "NLL", "lower", "held-out negative log-likelihood, nats/token"),
    Column("ppl", "ppl", "lower", "held-out perplexity, exp(NLL)"),
    Column("bpb", "bits/byte", "lower", "held-out bits per UTF-8 byte of text"),
    Column("acc", "acc", "higher", "top-1 next-token accuracy"),
    Column("ece", "ECE", "lower", "expected calibration error, 15 bins of top-1 confidence"),
    Column("brier", "Brier", "lower", "multi-class Brier score"),
    Column(
        "mutual_information",
        "MI",
        "",
        "Bayesian heads: mutual information (epistemic uncertainty), nats/token",
    ),
    Column(
        "bce", "BCE", "lower", "sigmoid heads: BCE against the one-hot true token, summed over the vocabulary"
    ),
    Column("set_size", "set size", "", "sigmoid heads: mean |{v: sigma(z_v) > 0.5}|"),
    Column("set_has_true", "set has true", "", "sigmoid heads: how often that set holds the truth"),
    Column("distinct_1", "dist-1", "higher", "samples: distinct unigrams / all (words)"),
    Column("distinct_2", "dist-2", "higher", "samples: distinct bigrams / all (words)"),
    Column("distinct_3", "dist-3", "higher", "samples: distinct trigrams / all (words)"),
    Column("distinct_4", "dist-4", "higher", "samples: distinct 4-grams / all (words)"),
    Column("self_bleu", "self-BLEU", "lower", "samples: BLEU-4 of each against the others (words)"),
    Column(
        "sample_ppl",
        "judge ppl",
        "lower",
        "samples: perplexity the baseline (first seed) assigns to the generated tokens; "
        "a quality proxy that favours the baseline's own samples",
    ),
    Column("ms_per_iter", "ms/iter", "lower", "training speed: median ms per iteration"),
]
# keys of a checkpoint's config that do not change what a run learns: a run that differs from
# the comparison's budget only in these is the same run
NOT_THE_RUN = {
    "out_dir",
    "log_dir",
    "run_name",
    "init_from",
    "eval_interval",
    "eval_iters",
    "log_interval",
    "eval_only",
    "eval_split",
    "sample_interval",
    "sample_tokens",
    "sample_prompt",
    "wandb_log",
    "wandb_project",
    "wandb_run_name",
    "device",
    "dtype",
    "compile",
    "backend",
    "peak_flops",
    "checkpoint_interval",
    "checkpoint_minutes",
    "keep_checkpoints",
    "max_bad_steps",
    "debug_nan_at_iter",
    "debug_nan_steps",
    "debug_save_pause_s",
    # the augmenter's targets are the same online or read from its cache
    "augment_source",
    "augment_cache",
}


@dataclass
class Run:
    variant: str
    seed: int
    cfg: TrainConfig

    @property
    def name(self) -> str:
        return f"{self.variant}-seed{self.seed}"

    @property
    def log_path(self) -> str:
        return os.path.join(self.cfg.log_dir, self.cfg.run_name)


def stage(message: str) -> None:
    print(f"== compare: {message}", flush=True)


def parse_variants(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    for name in names:
        if name not in VARIANTS:
            raise UserError(f"unknown variant {name!r} in variants; choose from {', '.join(VARIANTS)}")
    return [REFERENCE] + [v for v in dict.fromkeys(names) if v != REFERENCE]


def parse_seeds(text: str, default: int) -> list[int]:
    if not text.strip():
        return [default]
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise UserError("seeds lists no seed")
    return list(dict.fromkeys(seeds))


def ensure_data(cfg: CompareConfig) -> str:
    """The data folder; prepared through data/<dataset>/prepare.py's `prepare()` if missing."""
    data_dir = resolve_data_dir(cfg.dataset, cfg.data_dir)
    has = lambda split: os.path.isfile(os.path.join(data_dir, f"{split}.bin"))
    script = os.path.join(data_dir, "prepare.py")
    if (has("train") and (has("val") or has("test"))) or cfg.data_dir or not cfg.prepare_data:
        return data_dir
    if not os.path.isfile(script):
        return data_dir  # the training loop reports the missing data in one line
    stage(f"preparing {data_dir} (python {script})")
    spec = importlib.util.spec_from_file_location(f"prepare_{cfg.dataset}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.prepare()
    return data_dir


def plan_runs(cfg: CompareConfig, data_dir: str) -> list[Run]:
    """Every variant x seed as a TrainConfig of the shared budget, seed-major (so an interrupted
    comparison has whole seeds done), the reference baseline of the first seed first."""
    variants = parse_variants(cfg.variants)
    seeds = parse_seeds(cfg.seeds, cfg.seed)
    held_out = "val" if os.path.isfile(os.path.join(data_dir, "val.bin")) else "test"
    base = TrainConfig(**{f.name: getattr(cfg, f.name) for f in fields(TrainConfig)})
    teacher_dir = os.path.join(cfg.out_dir, f"{REFERENCE}-seed{seeds[0]}")
    teacher = f"ckpt:{teacher_dir}" if cfg.teacher == TEACHER_FROM_BASELINE else cfg.teacher
    runs = []
    for seed in seeds:
        for variant in variants:
            multi_hot = VARIANTS[variant].uses_extra_positives
            name = f"{variant}-seed{seed}"
            run_cfg = dataclasses.replace(
                base,
                variant=variant,
                seed=seed,
                data_dir=data_dir,
                out_dir=os.path.join(cfg.out_dir, name),
                log_dir=os.path.join(cfg.log_dir, cfg.name),
                run_name=name,
                init_from="scratch",
                eval_split=held_out,
                augment=cfg.augment and multi_hot,
                # softmax runs carry no teacher: their config does not depend on it
                teacher=teacher if cfg.augment and multi_hot else "",
            )
            runs.append(Run(variant, seed, run_cfg))
    return runs


def check_same_run(saved: Mapping, cfg: TrainConfig, path: str) -> None:
    """A checkpoint at the run's path must be this run: same model, data and budget."""
    wanted = dataclasses.asdict(cfg)
    ignored = set(NOT_THE_RUN)
    if not cfg.augment:  # the augmenter's settings do not touch a run that does not use it
        ignored |= {"teacher"} | {k for k in wanted if k.startswith("augment_")}
    for key in sorted(wanted.keys() & saved.keys() - ignored):
        same = saved[key] == wanted[key]
        if key == "data_dir":  # the same folder, reached from another working directory
            same = os.path.realpath(saved[key]) == os.path.realpath(wanted[key])
        if not same:
            raise UserError(
                f"{path} was trained with {key}={saved[key]!r}, this comparison asks for "
                f"{wanted[key]!r}: delete {os.path.dirname(path)} or pick another --out_dir/--name"
            )


def train_or_reuse(run: Run) -> str:
    """Train the run, resume it from its newest valid checkpoint, or reuse it when finished.
    Returns what happened: trained | resumed | reused."""
    found = find_resume_checkpoint(run.cfg.out_dir, report=warn)
    if found is not None:
        path, ckpt = found
        check_same_run(ckpt["config"], run.cfg, path)
        finished = ckpt["iter_num"] >= run.cfg.max_iters
        del found, ckpt  # the weights: train() loads its own copy
        if finished:
            return "reused"
        status = "resumed"
    else:
        status = "trained"
    # init_from=auto resumes where a checkpoint is and trims the log to it, else starts afresh
    earlier = training_seconds(run) if status == "resumed" else 0.0
    started = time.time()
    try:
        train(dataclasses.replace(run.cfg, init_from="auto"))
    finally:  # an interrupted attempt's time counts too: its checkpoints are resumed from
        spent = time.time() - started + (earlier if finite(earlier) else 0.0)
        os.makedirs(run.log_path, exist_ok=True)
        atomic_write_json(os.path.join(run.log_path, TRAIN_TIME), {"train_s": spent})
    return status


def training_seconds(run: Run) -> float:
    """Wall seconds spent training the run so far (NaN when compare.py did not train it)."""
    path = os.path.join(run.log_path, TRAIN_TIME)
    if not os.path.isfile(path):
        return math.nan
    with open(path) as f:
        return json.load(f)["train_s"]


# --- evaluation ---------------------------------------------------------------------------


@torch.no_grad()
def generate_samples(
    model: GPT, tokenizer: Tokenizer, prompts: Sequence[str], cfg: CompareConfig, rt: Runtime
) -> list[dict]:
    """num_samples continuations of every prompt; prompt i is sampled under seed sample_seed + i,
    so every run draws from the same random stream."""
    samples = []
    for i, prompt in enumerate(prompts):
        ids = tokenizer.encode(prompt)
        if not ids:
            raise UserError(f"prompt {prompt!r} encodes to no tokens")
        if len(ids) >= model.config.block_size:
            raise UserError(
                f"prompt {prompt[:40]!r} has {len(ids)} tokens, not fewer than "
                f"block_size={model.config.block_size}"
            )
        idx = torch.tensor([ids] * cfg.num_samples, dtype=torch.long, device=rt.device)
        with seeded(cfg.sample_seed + i, rt.device), rt.autocast():
            out = generate(model, idx, cfg.sample_tokens, cfg.temperature, cfg.top_k)
        for row in out.tolist():
            samples.append({"prompt": prompt, "prompt_ids": ids, "ids": row[len(ids) :]})
    return samples


@torch.no_grad()
def judge_nll(judge: GPT, prompt_ids: list[int], generated: list[int], rt: Runtime) -> tuple[float, int]:
    """Summed NLL the judge assigns to the generated tokens after the prompt, and their count.

    Each generated token is predicted from the up to block_size tokens before it, the context
    it was generated from: one pass over the first block_size + 1 tokens, then a window per
    later token (batched, a bounded number of tokens at a time).
    """
    sequence = prompt_ids + generated
    block, first = judge.config.block_size, len(prompt_ids)

    def nll_of(windows: list[list[int]], from_position: int) -> float:
        idx = torch.tensor(windows, dtype=torch.long, device=rt.device)
        with rt.autocast():
            hidden = judge.hidden_states(idx[:, :-1])[:, from_position:]
        log_probs = judge.variant.log_probs(hidden).float()
        targets = idx[:, from_position + 1 :]
        return -log_probs.gather(-1, targets.unsqueeze(-1)).sum().item()

    total = 0.0
    head = sequence[: block + 1]
    if first < len(head):  # output i of the head predicts its token i + 1
        total += nll_of([head], first - 1)
    later = [sequence[j - block : j + 1] for j in range(max(block + 1, first), len(sequence))]
    per_pass = max(1, 2**16 // block)
    for i in range(0, len(later), per_pass):
        total += nll_of(later[i : i + per_pass], block - 1)
    return total, len(generated)


def text_scores(texts: Sequence[str]) -> dict[str, float]:
    """distinct-1..4 and self-BLEU over whitespace words (tokenizer-independent, so char and
    BPE runs are scored alike), all samples of a run pooled."""
    words = [text.split() for text in texts]
    scores = {f"distinct_{n}": distinct_n(words, n) for n in range(1, 5)}
    scores["self_bleu"] = self_bleu(words) if len(words) >= 2 else math.nan
    return scores


def median_ms_per_iter(metrics_path: str) -> float:
    if not os.path.isfile(metrics_path):
        return math.nan
    times = [r["ms_per_iter"] for r in read_metrics(metrics_path).get("train", []) if "ms_per_iter" in r]
    return statistics.median(times) if times else math.nan


def evaluate_run(
    run: Run,
    cfg: CompareConfig,
    judge: GPT,
    judge_path: str,
    tokenizer: Tokenizer,
    prompts: list[str],
    rt: Runtime,
) -> dict:
    """Held-out metrics, reliability bins and scored samples of a run's final checkpoint,
    cached beside its logs (keyed by the checkpoint and the evaluation settings)."""
    path = checkpoint_path(run.cfg.out_dir)
    key = {
        "checkpoint": [path, os.stat(path).st_mtime_ns],
        "judge": [judge_path, os.stat(judge_path).st_mtime_ns],
        "split": run.cfg.eval_split,
        "final_eval_iters": cfg.final_eval_iters,
        "block_size": cfg.block_size,
        "batch_size": cfg.batch_size,
        "prompts": prompts,
        **{
            k: getattr(cfg, k)
            for k in ("num_samples", "sample_tokens", "temperature", "top_k", "sample_seed")
        },
    }
    cache_path = os.path.join(run.log_path, EVAL_CACHE)
    if os.path.isfile(cache_path):
        with open(cache_path) as f:
            cached = json.load(f)
        if cached.get("key") == json.loads(json.dumps(key)):
            return cached["result"]

    model, ckpt = load_model(path, rt.device, expect_variant=run.variant)
    iter_num = ckpt["iter_num"]
    del ckpt
    data = TokenData(run.cfg.data_dir, cfg.block_size, cfg.batch_size, rt.device, run.seed)
    token_bytes = torch.as_tensor(tokenizer.token_byte_lengths(), device=rt.device)
    accumulator = MetricAccumulator(device=rt.device)
    metrics = evaluate(
        model,
        data,
        run.cfg.eval_split,
        cfg.final_eval_iters,
        token_bytes,
        rt.autocast(),
        seed=run.seed,
        accumulator=accumulator,
    )
    samples = generate_samples(model, tokenizer, prompts, cfg, rt)
    nll_sum, scored = 0.0, 0
    for sample in samples:
        nll, count = judge_nll(judge, sample["prompt_ids"], sample["ids"], rt)
        nll_sum, scored = nll_sum + nll, scored + count
    texts = [tokenizer.decode(s["ids"]) for s in samples]
    metrics.update(text_scores(texts))
    metrics["sample_ppl"] = math.exp(nll_sum / scored) if scored else math.nan
    metrics["ms_per_iter"] = median_ms_per_iter(os.path.join(run.log_path, "metrics.jsonl"))
    result = {
        "iter": iter_num,
        "metrics": metrics,
        "reliability": accumulator.reliability(),
        "samples": [{"prompt": s["prompt"], "text": t} for s, t in zip(samples, texts)],
    }
    os.makedirs(run.log_path, exist_ok=True)
    atomic_write_json(cache_path, {"key": key, "result": result})
    return result


# --- the report -----------------------------------------------------------------------------


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def summarize(
    per_seed: Mapping[str, Mapping[int, Mapping[str, float]]],
) -> dict[str, dict[str, dict[str, float]]]:
    """variant -> seed -> metrics  =>  variant -> metric -> {mean, std, n} over the seeds
    (std: sample standard deviation, 0 for one seed; non-finite values are left out)."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for variant, seeds in per_seed.items():
        names = dict.fromkeys(k for metrics in seeds.values() for k in metrics)
        summary[variant] = {}
        for name in names:
            values = [m[name] for m in seeds.values() if finite(m.get(name))]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                summary[variant][name] = {"mean": statistics.fmean(values), "std": std, "n": len(values)}
    return summary


def best_variants(
    summary: Mapping[str, Mapping[str, Mapping[str, float]]], columns: Sequence[Column]
) -> dict[str, set[str]]:
    """Column key -> the variants whose mean is the best in that column (ties all win);
    columns without a direction, with fewer than two values, or where all tie have no best."""
    best: dict[str, set[str]] = {}
    for column in columns:
        if not column.better:
            continue
        means = {v: s[column.key]["mean"] for v, s in summary.items() if column.key in s}
        if len(means) < 2:
            continue
        target = (min if column.better == "lower" else max)(means.values())
        winners = {v for v, mean in means.items() if mean == target}
        if len(winners) < len(means):
            best[column.key] = winners
    return best


def format_cell(stats: Mapping[str, float] | None) -> str:
    if stats is None:
        return "–"
    text = f"{stats['mean']:.4g}"
    return f"{text} ± {stats['std']:.2g}" if stats["n"] > 1 else text


def shown_columns(
    summary: Mapping[str, Mapping[str, Mapping[str, float]]], columns: Sequence[Column] = COLUMNS
) -> list[Column]:
    """The columns that at least one variant has a value for."""
    return [c for c in columns if any(c.key in s for s in summary.values())]


def format_table(
    summary: Mapping[str, Mapping[str, Mapping[str, float]]], columns: Sequence[Column] = COLUMNS
) -> str:
    """One markdown table: a row per variant, a column per metric any variant has, the best
    value of each column in bold; ↓ lower is better, ↑ higher is better."""
    shown = shown_columns(summary, columns)
    best = best_variants(summary, shown)
    arrow = {"lower": " ↓", "higher": " ↑", "": ""}
    lines = [
        "| variant | " + " | ".join(c.header + arrow[c.better] for c in shown) + " |",
        "|---|" + "---:|" * len(shown),
    ]
    for variant, stats in summary.items():
        cells = []
        for column in shown:
            cell = format_cell(stats.get(column.key))
            cells.append(f"**{cell}**" if variant in best.get(column.key, ()) else cell)
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_samples_markdown(path: str, results: Mapping[str, Mapping[int, dict]]) -> None:
    with open(path, "w") as f:
        f.write("# Samples\n\nEvery run continues the same prompts under the same seeds.\n")
        for variant, seeds in results.items():
            for seed, result in seeds.items():
                f.write(f"\n## {variant}, seed {seed}\n")
                for i, sample in enumerate(result["samples"]):
                    text = sample["prompt"] + sample["text"]
                    f.write(f"\n### sample {i + 1}\n\n```\n{text}\n```\n")


def write_report(
    path: str,
    cfg: CompareConfig,
    command: str,
    summary: Mapping,
    runs: Sequence[Run],
    statuses: Mapping[str, str],
    wall_s: float,
    tokens_evaluated: float,
) -> None:
    first = runs[0].cfg
    tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    multi_hot = [r for r in runs if r.cfg.augment]
    teacher = multi_hot[0].cfg.teacher if multi_hot else "none (augment off, or no multi-hot run)"
    legend = "\n".join(f"- **{c.header}**: {c.about}" for c in shown_columns(summary))
    config_lines = "\n".join(f"{f.name} = {getattr(cfg, f.name)!r}" for f in fields(cfg))
    train_s = {r.name: training_seconds(r) for r in runs}
    run_lines = "\n".join(
        f"- {r.name}: {statuses[r.name]} ({r.cfg.out_dir}), "
        + (
            f"trained in {train_s[r.name] / 60:.1f} min"
            if finite(train_s[r.name])
            else "not trained by compare.py"
        )
        for r in runs
    )
    total_train_s = sum(t for t in train_s.values() if finite(t))
    total_tokens = cfg.max_iters * tokens_per_iter
    text = f"""# Comparison `{cfg.name}`

```sh
{command}
```

- data `{first.data_dir}`; held-out split **{first.eval_split}**: {tokens_evaluated:,.0f} tokens,
  the same windows for every run
- every run: {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, block {cfg.block_size};
  {cfg.max_iters} iterations of {tokens_per_iter:,} tokens ({total_tokens:,} in all)
- seeds {parse_seeds(cfg.seeds, cfg.seed)}: mean ± std over them; **bold**: the best value of a
  column (↓ lower is better, ↑ higher is better)
- augmenter teacher of the multi-hot variants: `{teacher}`
- samples: {len(cfg.prompts.split("|"))} prompts x {cfg.num_samples} samples x \
{cfg.sample_tokens} tokens, temperature {cfg.temperature}, top-k {cfg.top_k or "off"}; text \
scores on whitespace words
- time: training all runs took {total_train_s / 60:.1f} min; this invocation {wall_s / 60:.1f} min

{format_table(summary)}

{legend}

![loss curves](loss.png)

![reliability diagrams](reliability.png)

![samples](samples.png)

All samples: [samples.md](samples.md); every number: [results.json](results.json).

## Runs

{run_lines}

## Config

```python
{config_lines}
```
"""
    with open(path, "w") as f:
        f.write(text)


def compare(cfg: CompareConfig, command: str = "") -> dict:
    """Run the whole comparison; returns what results.json holds."""
    if int(os.environ.get("RANK", -1)) != -1:
        raise UserError(
            "compare.py runs as one process: train the runs with torchrun "
            "train_<variant>.py into <out_dir>/<variant>-seed<seed>, then compare.py "
            "reuses those checkpoints"
        )
    started = time.time()
    data_dir = ensure_data(cfg)
    runs = plan_runs(cfg, data_dir)
    prompts = cfg.prompts.split("|")
    report_dir = os.path.join(cfg.log_dir, cfg.name)
    os.makedirs(report_dir, exist_ok=True)

    statuses: dict[str, str] = {}
    for i, run in enumerate(runs, 1):
        stage(
            f"[{i}/{len(runs)}] train {run.name}"
            + (f" (augmenter, teacher {run.cfg.teacher})" if run.cfg.augment else "")
        )
        t0 = time.time()
        statuses[run.name] = train_or_reuse(run)
        stage(f"[{i}/{len(runs)}] {run.name}: {statuses[run.name]} ({time.time() - t0:.0f} s)")

    rt = setup_runtime(runs[0].cfg)
    tokenizer = load_tokenizer(data_dir)
    judge_path = checkpoint_path(runs[0].cfg.out_dir)  # the first seed's baseline
    judge, _ = load_model(judge_path, rt.device, expect_variant=REFERENCE)
    results: dict[str, dict[int, dict]] = {}
    for i, run in enumerate(runs, 1):
        stage(
            f"[{i}/{len(runs)}] evaluate {run.name} on {run.cfg.eval_split} "
            f"({cfg.final_eval_iters} batches) and sample {len(prompts)} x {cfg.num_samples}"
        )
        result = evaluate_run(run, cfg, judge, judge_path, tokenizer, prompts, rt)
        results.setdefault(run.variant, {})[run.seed] = result

    summary = summarize({v: {s: r["metrics"] for s, r in seeds.items()} for v, seeds in results.items()})
    table = format_table(summary)
    stage(f"writing the report to {report_dir}")
    plot_loss_curves(
        {r.name: os.path.join(r.log_path, "metrics.jsonl") for r in runs},
        os.path.join(report_dir, "loss.png"),
        groups={r.name: r.variant for r in runs},
        title=cfg.name,
    )
    first_seed = {v: seeds[runs[0].seed] for v, seeds in results.items()}
    plot_reliability(
        {v: r["reliability"] for v, r in first_seed.items()},
        os.path.join(report_dir, "reliability.png"),
        ece={v: r["metrics"]["ece"] for v, r in first_seed.items()},
        title=f"reliability on {runs[0].cfg.eval_split}, seed {runs[0].seed}",
    )
    # one sample per prompt and variant: the same prompt and seed side by side
    plot_samples(
        {
            v: [s["prompt"] + s["text"] for s in r["samples"][:: cfg.num_samples]]
            for v, r in first_seed.items()
        },
        os.path.join(report_dir, "samples.png"),
    )
    write_samples_markdown(os.path.join(report_dir, "samples.md"), results)
    wall_s = time.time() - started
    output = {
        "command": command,
        "config": dataclasses.asdict(cfg),
        "wall_s": wall_s,
        "statuses": statuses,
        "train_s": {r.name: training_seconds(r) for r in runs},
        "summary": summary,
        "best": {k: sorted(v) for k, v in best_variants(summary, COLUMNS).items()},
        "runs": {v: {str(s): r for s, r in seeds.items()} for v, seeds in results.items()},
    }
    atomic_write_json(os.path.join(report_dir, "results.json"), output)
    tokens = next(iter(first_seed.values()))["metrics"]["tokens"]
    write_report(os.path.join(report_dir, "report.md"), cfg, command, summary, runs, statuses, wall_s, tokens)
    print()
    print(table)
    print(f"\n{os.path.join(report_dir, 'report.md')} ({wall_s / 60:.1f} min)")
    return output


@cli
def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    cfg = apply_config(CompareConfig(), argv)
    return compare(cfg, command=shlex.join(["python", "compare.py", *argv]))


if __name__ == "__main__":
    main()
