"""The final evaluation of a run: held-out metrics on fixed windows (kept per window for the
paired bootstrap), reliability bins, samples from fixed prompts and seeds, their text scores and
the perplexity a judge (the teacher) assigns them. Cached beside the run's logs."""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from nanoGPT.atomic import atomic_write_json
from nanoGPT.checkpoint import checkpoint_path, load_model
from nanoGPT.compare.plan import Run, final_split
from nanoGPT.compare.probes import checkpoint_probes
from nanoGPT.compare.trunks import final_train_loss, inference_ms_per_token
from nanoGPT.data import TokenData
from nanoGPT.errors import UserError
from nanoGPT.metrics import MetricAccumulator, WindowAccumulator
from nanoGPT.model import GPT
from nanoGPT.ood import ood_report
from nanoGPT.plotting import read_metrics
from nanoGPT.runtime import Runtime, seeded, setup_runtime
from nanoGPT.sampling import generate
from nanoGPT.text_metrics import distinct_n, self_bleu
from nanoGPT.tokenizer import Tokenizer, load_tokenizer

EVAL_CACHE = "compare_eval.json"
# what measure() computes: a cached evaluation of an older version is measured again
MEASURES = 2  # 2: params, train_loss, infer_ms_per_token


@dataclass(frozen=True)
class EvalSettings:
    """What the final evaluation of every run shares (from CompareConfig)."""

    final_eval_iters: int
    block_size: int
    batch_size: int
    prompts: tuple[str, ...]
    num_samples: int
    sample_tokens: int
    temperature: float
    top_k: int
    sample_seed: int
    probe_examples: int = 0  # embedded probe items per split and task (0 = no probes)


@torch.no_grad()
def generate_samples(model: GPT, tokenizer: Tokenizer, settings: EvalSettings, rt: Runtime) -> list[dict]:
    """num_samples continuations of every prompt; prompt i is sampled under seed sample_seed + i,
    so every run draws from the same random stream."""
    samples = []
    for i, prompt in enumerate(settings.prompts):
        ids = tokenizer.encode(prompt)
        if not ids:
            raise UserError(f"prompt {prompt!r} encodes to no tokens")
        if len(ids) >= model.config.block_size:
            raise UserError(
                f"prompt {prompt[:40]!r} has {len(ids)} tokens, not fewer than "
                f"block_size={model.config.block_size}"
            )
        idx = torch.tensor([ids] * settings.num_samples, dtype=torch.long, device=rt.device)
        with seeded(settings.sample_seed + i, rt.device), rt.autocast():
            out = generate(model, idx, settings.sample_tokens, settings.temperature, settings.top_k)
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


# what the report keeps of nanoGPT/ood.py: the AUROCs, and the mean scores on both text sets
OOD_KEYS = ("ood_auroc_", "in_mutual_information", "shifted_mutual_information", "shifted_nll")


def text_scores(texts: Sequence[str]) -> dict[str, float]:
    """distinct-1..4 and self-BLEU over whitespace words (tokenizer-independent, so char and
    piece runs are scored alike), all samples of a run pooled."""
    words = [text.split() for text in texts]
    scores = {f"distinct_{n}": distinct_n(words, n) for n in range(1, 5)}
    scores["self_bleu"] = self_bleu(words) if len(words) >= 2 else math.nan
    return scores


def median_ms_per_iter(metrics_path: str) -> float:
    if not os.path.isfile(metrics_path):
        return math.nan
    times = [r["ms_per_iter"] for r in read_metrics(metrics_path).get("train", []) if "ms_per_iter" in r]
    return statistics.median(times) if times else math.nan


def evaluated_checkpoint(run: Run) -> tuple[str, str]:
    """(path, which): best.pt (chosen on val) when the final split is another one (test), else
    the last checkpoint (picking by the split we report on would flatter the run)."""
    best = checkpoint_path(run.cfg.out_dir, "best")
    if final_split(run.cfg.data_dir) != run.cfg.eval_split and os.path.isfile(best):
        return best, "best"
    return checkpoint_path(run.cfg.out_dir), "last"


def cache_key(run: Run, settings: EvalSettings, judge_path: str) -> dict:
    path, _ = evaluated_checkpoint(run)
    key = {
        "checkpoint": [path, os.stat(path).st_mtime_ns],
        "judge": [judge_path, os.stat(judge_path).st_mtime_ns] if judge_path else None,
        "split": final_split(run.cfg.data_dir),
        "measures": MEASURES,
        **settings.__dict__,
    }
    return json.loads(json.dumps(key))


def evaluate_run(run: Run, settings: EvalSettings, judge_path: str) -> dict:
    """Held-out metrics, per-window sums, reliability bins and scored samples of a run's
    checkpoint, cached beside its logs (keyed by the checkpoint and the evaluation settings)."""
    key = cache_key(run, settings, judge_path)
    cache_path = os.path.join(run.log_path, EVAL_CACHE)
    if os.path.isfile(cache_path):
        with open(cache_path) as f:
            cached = json.load(f)
        if cached.get("key") == key:
            return cached["result"]
    result = measure(run, settings, judge_path)
    os.makedirs(run.log_path, exist_ok=True)
    atomic_write_json(cache_path, {"key": key, "result": result})
    return result


def measure(run: Run, settings: EvalSettings, judge_path: str) -> dict:
    rt = setup_runtime(run.cfg)
    path, which = evaluated_checkpoint(run)
    model, ckpt = load_model(path, rt.device, expect_variant=run.variant)
    iter_num = ckpt["iter_num"]
    del ckpt
    split = final_split(run.cfg.data_dir)
    tokenizer = load_tokenizer(run.cfg.data_dir)
    data = TokenData(run.cfg.data_dir, settings.block_size, settings.batch_size, rt.device, run.seed)
    token_bytes = torch.as_tensor(tokenizer.token_byte_lengths(), device=rt.device)
    accumulator, windows = MetricAccumulator(device=rt.device), WindowAccumulator()

    def sum_held_out(log_probs, targets, window, extras) -> None:
        accumulator.update(log_probs, targets, token_bytes[targets], extras)
        windows.update(log_probs, targets, window)

    # one pass scores the held-out windows (metrics, per-window sums for the bootstrap, OOD
    # scores) and then as many windows of shifted text: can the row's uncertainty tell them apart?
    ood = ood_report(
        model, data, tokenizer, split, settings.final_eval_iters, run.seed, rt.autocast(),
        on_held_out=sum_held_out,
    )  # fmt: skip
    metrics = accumulator.compute()
    metrics.update({k: v for k, v in ood.items() if k.startswith(OOD_KEYS)})
    metrics.update(checkpoint_probes(model, tokenizer, rt, settings.probe_examples))
    samples = generate_samples(model, tokenizer, settings, rt)
    metrics["params"] = model.num_params()
    metrics["infer_ms_per_token"] = inference_ms_per_token(
        model, samples[0]["prompt_ids"], settings.sample_tokens, rt
    )
    del model
    texts = [tokenizer.decode(s["ids"]) for s in samples]
    metrics.update(text_scores(texts))
    metrics["sample_ppl"] = judge_perplexity(judge_path, samples, rt) if judge_path else math.nan
    metrics["ms_per_iter"] = median_ms_per_iter(os.path.join(run.log_path, "metrics.jsonl"))
    metrics["train_loss"] = final_train_loss(os.path.join(run.log_path, "metrics.jsonl"))
    return {
        "iter": iter_num,
        "checkpoint": which,
        "split": split,
        "metrics": metrics,
        "reliability": accumulator.reliability(),
        "windows": windows.arrays(),
        "samples": [{"prompt": s["prompt"], "text": t} for s, t in zip(samples, texts)],
    }


def judge_perplexity(judge_path: str, samples: list[dict], rt: Runtime) -> float:
    judge, _ = load_model(judge_path, rt.device)
    nll_sum, scored = 0.0, 0
    for sample in samples:
        nll, count = judge_nll(judge, sample["prompt_ids"], sample["ids"], rt)
        nll_sum, scored = nll_sum + nll, scored + count
    return math.exp(nll_sum / scored) if scored else math.nan
