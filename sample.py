"""Sample from a trained checkpoint of any variant, through that variant's predictive.

python sample.py --out_dir=out/baseline-shakespeare-char --start="ROMEO:" --num_samples=3
python sample.py --out_dir=out/x --start=FILE:prompt.txt --top_p=0.9 --temperature=0.8
python sample.py --init_from=gpt2 --start="The boy went to the" --dtype=bfloat16 --compile=True
python sample.py --out_dir=out/x --do_sample=False --num_beams=4 --no_repeat_ngram_size=3

init_from=resume samples a checkpoint of out_dir with its own tokenizer; gpt2, gpt2-medium,
gpt2-large, gpt2-xl or a local folder saved with transformers' save_pretrained samples OpenAI
GPT-2 weights (as the baseline variant) with the GPT-2 tokenizer.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

from nanoGPT.checkpoint import checkpoint_path, checkpoint_tokenizer, load_model, repair_pointers
from nanoGPT.config import ModelConfig, apply_config
from nanoGPT.errors import UserError, cli
from nanoGPT.model import GPT
from nanoGPT.runtime import inference_runtime
from nanoGPT.sampling import compile_for_generation, generate
from nanoGPT.tokenizer import Tokenizer, gpt2_tokenizer


@dataclass
class SampleConfig:
    init_from: str = "resume"  # resume (a checkpoint in out_dir) | gpt2 | gpt2-medium | ... | HF folder
    out_dir: str = "out"
    ckpt: str = "last"  # last | best
    variant: str = ""  # if set, the checkpoint must be of this variant
    start: str = "\n"  # the prompt, or FILE:path
    num_samples: int = 3
    max_new_tokens: int = 200
    # the options of Hugging Face's generate(), with its semantics (nanoGPT/generation.py)
    do_sample: bool = True  # False: greedy, or beam search with num_beams > 1
    temperature: float = 0.8  # sampling only, as the two below
    top_k: int = 200  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # > 1: the log-probs of tokens already in the text are multiplied by it
    no_repeat_ngram_size: int = 0  # > 0: no n-gram of this size occurs twice
    num_beams: int = 1  # > 1: beam search (with do_sample=True, beam sampling)
    length_penalty: float = 1.0  # beam search: a finished beam scores sum(log p) / length ** length_penalty
    early_stopping: str = "false"  # beam search: true (stop at num_beams finished) | false | never
    stop_at_eos: bool = True  # end a sample at the tokenizer's end of text (GPT-2's <|endoftext|>), if any
    bayes_samples: int = 0  # Bayesian variants: weight samples per token; 0 = as trained
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (autocast; auto: bf16 on CUDA, fp32 on CPU)
    compile: bool = False  # torch.compile the trunk (pays off for long or many samples)


def read_prompt(start: str) -> str:
    if start.startswith("FILE:"):
        path = start[5:]
        if not os.path.isfile(path):
            raise UserError(f"prompt file {path} not found")
        with open(path, encoding="utf-8") as f:
            return f.read()
    return start


def load_for_sampling(cfg: SampleConfig, device: str) -> tuple[GPT, Tokenizer]:
    """The model to sample, in eval mode on `device`, and the tokenizer of its ids."""
    if cfg.init_from == "resume":
        repair_pointers(cfg.out_dir)  # a save killed before its links, or a damaged link
        path = checkpoint_path(cfg.out_dir, cfg.ckpt)
        overrides = {"bayes_samples": cfg.bayes_samples} if cfg.bayes_samples else {}
        model, ckpt = load_model(path, device, expect_variant=cfg.variant or None, **overrides)
        return model, checkpoint_tokenizer(ckpt)
    if cfg.variant not in ("", "baseline"):
        raise UserError(f"init_from={cfg.init_from} is a softmax GPT-2: leave variant unset (or baseline)")
    model = GPT.from_pretrained(cfg.init_from, ModelConfig())
    tokenizer = gpt2_tokenizer()
    if model.config.vocab_size != tokenizer.vocab_size:
        raise UserError(
            f"init_from={cfg.init_from} has a vocabulary of {model.config.vocab_size} tokens; "
            f"sample.py reads Hugging Face models with the GPT-2 tokenizer ({tokenizer.vocab_size})"
        )
    return model.to(device).eval(), tokenizer


def sample(cfg: SampleConfig) -> list[str]:
    early_stopping = parse_early_stopping(cfg.early_stopping)
    rt = inference_runtime(cfg.device, cfg.dtype)
    model, tokenizer = load_for_sampling(cfg, rt.device)
    if cfg.compile:
        model = compile_for_generation(model)
    ids = tokenizer.encode(read_prompt(cfg.start))
    if not ids:
        raise UserError("the prompt encodes to no tokens")
    block = model.config.block_size
    if len(ids) > block:
        print(
            f"warning: prompt of {len(ids)} tokens cropped to the last {block} (block_size)", file=sys.stderr
        )
        ids = ids[-block:]
    torch.manual_seed(cfg.seed)
    idx = torch.tensor([ids] * cfg.num_samples, dtype=torch.long, device=rt.device)
    eos = tokenizer.eot_id if cfg.stop_at_eos else None
    with rt.autocast():
        out = generate(
            model,
            idx,
            cfg.max_new_tokens,
            cfg.temperature,
            cfg.top_k,
            cfg.top_p,
            greedy=not cfg.do_sample,
            no_repeat_ngram_size=cfg.no_repeat_ngram_size,
            repetition_penalty=cfg.repetition_penalty,
            num_beams=cfg.num_beams,
            length_penalty=cfg.length_penalty,
            early_stopping=early_stopping,
            eos_token_id=eos,
        )
    return [tokenizer.decode(until_eos(row.tolist(), len(ids), eos)) for row in out]


def parse_early_stopping(text: str) -> bool | str:
    choices = {"true": True, "false": False, "never": "never"}
    if text.lower() not in choices:
        raise UserError(f"early_stopping must be true, false or never, got {text!r}")
    return choices[text.lower()]


def until_eos(row: list[int], prompt_len: int, eos: int | None) -> list[int]:
    """The prompt and what was generated before the first end of text (which, like the
    padding after it, is not printed)."""
    generated = row[prompt_len:]
    if eos is not None and eos in generated:
        generated = generated[: generated.index(eos)]
    return row[:prompt_len] + generated


@cli
def main(argv: list[str] | None = None) -> list[str]:
    cfg = apply_config(SampleConfig(), sys.argv[1:] if argv is None else argv)
    texts = sample(cfg)
    for text in texts:
        print(text)
        print("---------------")
    return texts


if __name__ == "__main__":
    main()
