"""The GPT trunk: causality, the baseline loss, GPT-2 import, the KV cache."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from nanoGPT.config import ModelConfig
from nanoGPT.errors import UserError
from nanoGPT.model import GPT
from nanoGPT.sampling import generate

TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=61, dropout=0.0)


def test_causality_changing_future_tokens_leaves_past_outputs_unchanged():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    idx = torch.randint(TINY.vocab_size, (2, TINY.block_size))
    for t in (0, 5, TINY.block_size - 2):
        changed = idx.clone()
        changed[:, t + 1 :] = torch.randint(TINY.vocab_size, changed[:, t + 1 :].shape)
        with torch.no_grad():
            a, b = model(idx), model(changed)
        assert torch.allclose(a[:, : t + 1], b[:, : t + 1], atol=1e-6)
        assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])


def test_baseline_loss_equals_cross_entropy_on_the_same_logits():
    torch.manual_seed(0)
    model = GPT(TINY)
    idx = torch.randint(TINY.vocab_size, (3, 10))
    targets = torch.randint(TINY.vocab_size, (3, 10))
    loss, _ = model(idx, targets)
    logits = model.variant.lm_head(model.hidden_states(idx))
    reference = F.cross_entropy(logits.view(-1, TINY.vocab_size), targets.view(-1))
    assert torch.allclose(loss, reference, atol=1e-6)
    # the head is tied to the token embedding
    assert model.variant.lm_head.weight is model.transformer.wte.weight


def test_kv_cache_generation_equals_full_recomputation():
    torch.manual_seed(0)
    model = GPT(TINY).eval()
    prompt = torch.randint(TINY.vocab_size, (2, 5))
    # runs past block_size, exercising both the cached and the cropped path
    out = generate(model, prompt, max_new_tokens=20, greedy=True)
    idx = prompt
    for _ in range(20):
        hidden = model.hidden_states(idx[:, -TINY.block_size :])
        next_ids = model.variant.log_probs(hidden[:, -1]).argmax(-1, keepdim=True)
        idx = torch.cat([idx, next_ids], dim=1)
    assert torch.equal(out, idx)


def test_gpt2_import_from_a_local_folder_gives_the_same_logits(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf_config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=24, vocab_size=97)
    hf_model = GPT2LMHeadModel(hf_config).eval()
    hf_model.save_pretrained(tmp_path)
    model = GPT.from_pretrained(str(tmp_path), ModelConfig()).eval()
    assert (model.config.n_layer, model.config.vocab_size, model.config.block_size) == (2, 97, 24)
    idx = torch.randint(97, (2, 24))
    with torch.no_grad():
        reference = hf_model(idx).logits
        ours = model.variant.lm_head(model.hidden_states(idx))
    assert torch.allclose(ours, reference, atol=1e-4)


def test_gpt2_import_without_hub_or_folder_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="init_from=<local folder"):
        GPT.from_pretrained(str(tmp_path / "no-such-model"), ModelConfig())


def test_block_size_is_enforced():
    model = GPT(dataclasses.replace(TINY, block_size=8))
    with pytest.raises(ValueError):
        model(torch.zeros(1, 9, dtype=torch.long))
