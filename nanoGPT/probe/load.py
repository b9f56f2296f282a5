"""What probe.py probes: the extractor of a checkpoint, of a fresh trunk of its architecture or
of a Hugging Face model, and the tasks named on the command line."""

from __future__ import annotations

from nanoGPT.checkpoint import (
    checkpoint_path,
    checkpoint_tokenizer,
    load_checkpoint,
    load_model,
    model_config_of,
)
from nanoGPT.config import ModelConfig
from nanoGPT.errors import UserError
from nanoGPT.hub import load_pretrained
from nanoGPT.model import GPT
from nanoGPT.probe.evaluate import random_trunk
from nanoGPT.probe.features import EncoderFeatures, Extractor, GPTFeatures
from nanoGPT.probe.hub_tasks import HUB_TASKS, hub_task, local_task
from nanoGPT.probe.plays import embedded_tasks
from nanoGPT.probe.tasks import Task
from nanoGPT.runtime import Runtime
from nanoGPT.tokenizer import gpt2_tokenizer

HF_HINT = (
    "connect to the Hugging Face hub once to cache it, or pass a local folder saved with save_pretrained"
)
EMBEDDED = ("genre", "next_line", "continuation")


def load_extractor(init_from: str, out_dir: str, ckpt: str, rt: Runtime, batch_tokens: int) -> Extractor:
    """resume: the checkpoint of out_dir; random: its architecture freshly initialised (the
    floor); a Hugging Face name or folder: GPT-2 through this framework's GPT, any other model
    (DistilBERT, BERT...) as an encoder through transformers."""
    if init_from in ("resume", "random"):
        checkpoint = load_checkpoint(checkpoint_path(out_dir, ckpt), map_location="cpu")
        tokenizer = checkpoint_tokenizer(checkpoint)
        if init_from == "random":
            model = random_trunk(model_config_of(checkpoint)).to(rt.device)
        else:
            model, _ = load_model(checkpoint_path(out_dir, ckpt), rt.device)
        return GPTFeatures(model, tokenizer, rt.device, rt.autocast, batch_tokens)
    config = load_pretrained("AutoConfig", init_from, HF_HINT)
    if config.model_type == "gpt2":
        model = GPT.from_pretrained(init_from, ModelConfig()).to(rt.device).eval()
        return GPTFeatures(model, gpt2_tokenizer(), rt.device, rt.autocast, batch_tokens)
    encoder = load_pretrained("AutoModel", init_from, HF_HINT)
    tokenizer = load_pretrained("AutoTokenizer", init_from, HF_HINT)
    return EncoderFeatures(encoder, tokenizer, rt.device)


def select_tasks(tasks: str, input_files: str, examples: int, max_examples: int, seed: int) -> list[Task]:
    """The tasks of a comma-separated list (embedded = its three tasks), or of --input files."""
    if input_files:
        return [local_task(input_files, max_examples, seed)]
    names = [n.strip() for n in tasks.split(",") if n.strip()]
    names = [e for n in names for e in (EMBEDDED if n == "embedded" else (n,))]
    unknown = [n for n in names if n not in EMBEDDED + HUB_TASKS]
    if unknown or not names:
        raise UserError(
            f"unknown probe task {', '.join(unknown) or '(none)'}; choose from embedded, "
            f"{', '.join(EMBEDDED + HUB_TASKS)}"
        )
    chosen = []
    for name in dict.fromkeys(names):
        if name in EMBEDDED:
            chosen.append(embedded_tasks(examples, seed)[EMBEDDED.index(name)])
        else:
            chosen.append(hub_task(name, max_examples, seed))
    return chosen
