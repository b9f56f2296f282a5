"""nanoGPT/probe and probe.py: probes separate separable features and stay at chance on shuffled
labels; the margin ranking loss and the retrieval metrics match hand-computed values; the
embedded tasks are deterministic and their train and test text disjoint; zero-shot scores are
the direct sum of the variant's log-probs; probe.py runs end to end on a tiny checkpoint; the
comparison report shows each row's probes beside the untrained floor."""

import dataclasses
import json
import os

import pytest
import torch

import compare
import probe
from nanoGPT.config import ModelConfig
from nanoGPT.model import GPT
from nanoGPT.probe.evaluate import zero_shot
from nanoGPT.probe.features import GPTFeatures
from nanoGPT.probe.heads import accuracy, margin_ranking_loss, retrieval_metrics, train_classifier
from nanoGPT.probe.plays import continuation_task, corpus_lines, genre_task, next_line_task
from nanoGPT.probe.tasks import Choice
from nanoGPT.tokenizer import CharTokenizer
from nanoGPT.train import train
from tests.conftest import tiny_config
from tests.test_compare import small_data, tiny_compare  # noqa: F401 (small_data: a fixture)


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two well separated Gaussian clouds in 16 dimensions, labels 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    features = torch.randn(n, 16, generator=g) + 4.0 * labels[:, None] * torch.ones(16)
    return features, labels


@pytest.mark.parametrize("head", ["logreg", "mlp"])
def test_probe_separates_separable_features_and_not_shuffled_labels(head):
    x_train, y_train = blobs(200, 0)
    x_test, y_test = blobs(200, 1)
    assert accuracy(train_classifier(x_train, y_train, 2, head)(x_test), y_test) >= 0.99
    shuffled = y_train[torch.randperm(200, generator=torch.Generator().manual_seed(2))]
    chance = accuracy(train_classifier(x_train, shuffled, 2, head, class_weights=True)(x_test), y_test)
    assert 0.35 <= chance <= 0.65


def test_margin_ranking_loss_by_hand():
    scores = torch.tensor([[1.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    # item 0: 1 - (1 - 0.5) = 0.5 and 1 - (1 + 1) < 0 -> 0; item 1: 1 - 0 = 1 twice
    loss = margin_ranking_loss(scores, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx((0.5 + 0 + 1 + 1) / 4)


def test_retrieval_metrics_by_hand():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    documents = torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, 0.0]])
    # ranks of the relevant document: q0 -> d0 first; q1 -> d0 second (d1 closer); q2 -> d2 last
    metrics = retrieval_metrics(queries, documents, [{0}, {0}, {2}], ks=(1, 2, 3))
    assert metrics["recall@1"] == pytest.approx(1 / 3)
    assert metrics["recall@2"] == pytest.approx(2 / 3)
    assert metrics["recall@3"] == pytest.approx(1.0)
    assert metrics["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_embedded_tasks_are_deterministic_and_train_and_test_disjoint():
    _, cut, text = corpus_lines()
    plays, train_text, held_out = text.split("\n\n\n"), text[:cut], text[cut:]
    genre = genre_task(12)
    assert genre == genre_task(12) and next_line_task(12) == next_line_task(12)
    assert sorted(set(genre.test_labels)) == [0, 1, 2] and len(genre.test_texts) == 12

    def plays_of(passage: str) -> set[int]:
        return {i for i, play in enumerate(plays) if passage in play}

    train_plays = set().union(*map(plays_of, genre.train_texts))
    test_plays = set().union(*map(plays_of, genre.test_texts))
    assert train_plays and test_plays and not train_plays & test_plays  # split by play
    next_line = next_line_task(12)
    for item in next_line.test:  # split by position: the held-out 10% only
        assert item.context in held_out and all(c in held_out for c in item.choices)
        assert item.context not in train_text
    assert all(item.context in train_text for item in next_line.train)
    assert {item.answer for item in next_line.test} == {0, 1, 2, 3}
    retrieval = continuation_task(12)
    assert retrieval == continuation_task(12) and len(set(retrieval.queries + retrieval.documents)) == 24
    assert all(q + d in held_out for q, d in zip(retrieval.queries, retrieval.documents))


# a sigmoid head on the GPT trunk; the conv trunk predicting 2 tokens ahead (its look-ahead)
@pytest.mark.parametrize(
    "trunk", [dict(variant="sigmoid"), dict(arch="conv", n_layer=3, conv_factor=2, predict_ahead=0)]
)
def test_zero_shot_scores_are_the_direct_sum_of_the_variants_log_probs(trunk):
    tokenizer = CharTokenizer.from_text(corpus_lines()[2])
    torch.manual_seed(0)
    config = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=tokenizer.vocab_size)
    model = GPT(dataclasses.replace(config, **trunk)).eval()
    ahead = model.config.target_offset()
    item = Choice("ROMEO:\nBut soft, what light\n", ("through yonder window breaks?", "is the east"), 0)
    scored = GPTFeatures(model, tokenizer).choices([item])  # both choices in one padded batch
    for j, choice in enumerate(item.choices):
        context, ids = tokenizer.encode(item.context), tokenizer.encode(choice)
        idx = torch.tensor([context + ids])
        with torch.no_grad():
            log_probs = model.variant.log_probs(model.hidden_states(idx)[0])
        direct = sum(log_probs[len(context) + k - ahead, t].item() for k, t in enumerate(ids))
        assert scored.log_prob[0, j].item() == pytest.approx(direct, rel=1e-5)
        assert scored.count[0, j] == len(ids)
        assert scored.features["last"].shape == (1, 2, 32)
    picked = zero_shot(scored.log_prob, scored.count, torch.tensor([0]))
    assert picked["zero_shot_sum"] == float(scored.log_prob[0, 0] > scored.log_prob[0, 1])


@pytest.fixture(scope="module")
def tiny_checkpoint(char_data, tmp_path_factory) -> str:
    cfg = tiny_config(char_data, tmp_path_factory.mktemp("probe"), max_iters=4, eval_interval=4)
    train(cfg)
    return cfg.out_dir


def test_probe_cli_runs_the_embedded_tasks_on_a_checkpoint(tiny_checkpoint, tmp_path, capsys):
    out = str(tmp_path / "probe.json")
    args = [f"--out_dir={tiny_checkpoint}", "--examples=12", "--device=cpu", f"--out={out}"]
    results = probe.main(args)
    assert set(results) == {"genre", "next_line", "continuation"}
    scores = results["next_line"]["results"]
    for key in ("ranker/mean", "ranker/last", "zero_shot_sum", "zero_shot_mean", "chance"):
        assert 0 <= scores[f"next_line/{key}"] <= 1, key
    assert "genre/mlp/last" in results["genre"]["results"]
    assert "continuation/mrr/mean" in results["continuation"]["results"]
    printed = capsys.readouterr().out
    assert "split by play" in printed and "by position" in printed
    assert json.load(open(out)) == results
    floor = probe.main(
        [f"--out_dir={tiny_checkpoint}", "--init_from=random", "--examples=12", "--tasks=genre"]
    )
    assert set(floor) == {"genre"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks=ag_news"], "could not load ag_news"),
        (["--tasks=nope"], "unknown probe task nope"),
        (["--heads=svm"], "heads must be"),
        (["--input=train:missing.csv,test:missing.csv"], "not found"),
        (["--init_from=distilbert-base-uncased"], "not in the local Hugging Face cache"),
    ],
)
def test_probe_cli_errors_are_one_line(tiny_checkpoint, args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        probe.main([f"--out_dir={tiny_checkpoint}", "--examples=12", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1


def test_compare_reports_every_rows_probes_beside_the_floor(small_data, tmp_path):  # noqa: F811
    cfg = tiny_compare(small_data, tmp_path)
    cfg = dataclasses.replace(
        cfg, rows="baseline,sigmoid", seeds="1", teacher="", max_iters=4, eval_interval=4, probe_examples=12,
        sample_tokens=4,
    )  # fmt: skip
    output = compare.compare(cfg)
    report = open(os.path.join(cfg.log_dir, cfg.name, "report.md")).read()
    assert "## Probes" in report and "| random trunk (floor) | " in report and "| chance | " in report
    for row in ("baseline", "sigmoid"):
        metrics = output["runs"][row]["1"]["metrics"]
        assert 0 <= metrics["zero_shot_sum"] <= 1 and 0 <= metrics["probe_genre"] <= 1, row
    assert set(output["probe_floor"]) == set(output["summary"]["baseline"]) & set(output["probe_floor"])
    assert 0 <= output["probe_floor"]["retrieval_mrr"] <= 1


@pytest.fixture(scope="module")
def hf_encoder_folder(tmp_path_factory) -> str:
    """A tiny randomly initialised DistilBERT and a word-piece vocabulary, saved with
    save_pretrained: what --init_from=distilbert-base-uncased loads, without the hub."""
    from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizerFast

    folder = tmp_path_factory.mktemp("hf_encoder")
    words = "the and i you my of to a in that is not with me it for his be this your he but have".split()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    DistilBertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=5 + len(words), dim=32, hidden_dim=64, n_layers=1, n_heads=2)
    DistilBertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.mark.slow
def test_probe_cli_reads_hugging_face_encoders_and_gpt2(hf_encoder_folder, hf_gpt2_folder):
    encoder = probe.main([f"--init_from={hf_encoder_folder}", "--examples=12", "--device=cpu"])
    assert "genre/logreg/cls" in encoder["genre"]["results"]
    assert "next_line/ranker/cls" in encoder["next_line"]["results"]
    assert "next_line/zero_shot_sum" not in encoder["next_line"]["results"]  # an encoder has no predictive
    gpt2 = probe.main([f"--init_from={hf_gpt2_folder}", "--examples=12", "--tasks=next_line", "--device=cpu"])
    assert 0 <= gpt2["next_line"]["results"]["next_line/zero_shot_mean"] <= 1


def test_probe_cli_reads_local_files(tiny_checkpoint, tmp_path):
    import pandas as pd

    genre = genre_task(12)
    pd.DataFrame({"text": genre.train_texts, "label": [genre.classes[y] for y in genre.train_labels]}).to_csv(
        tmp_path / "train.csv", index=False
    )
    pd.DataFrame({"text": genre.test_texts, "label": [genre.classes[y] for y in genre.test_labels]}).to_csv(
        tmp_path / "test.csv", index=False
    )
    files = f"--input=train:{tmp_path / 'train.csv'},test:{tmp_path / 'test.csv'}"
    results = probe.main([f"--out_dir={tiny_checkpoint}", files, "--heads=logreg", "--class_weights=True"])
    assert set(results["input"]["results"]) == {"input/logreg/mean", "input/logreg/last", "input/chance"}
    items = next_line_task(12).test
    rows = [{"context": i.context, "choices": list(i.choices), "label": i.answer} for i in items]
    for split in ("train", "test"):
        pd.DataFrame(rows).to_json(tmp_path / f"{split}.jsonl", orient="records", lines=True)
    files = f"--input=train:{tmp_path / 'train.jsonl'},test:{tmp_path / 'test.jsonl'}"
    results = probe.main([f"--out_dir={tiny_checkpoint}", files])
    assert 0 <= results["input"]["results"]["input/zero_shot_sum"] <= 1
