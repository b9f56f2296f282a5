"""nanoGPT.hub: HF_ENDPOINT / HF_HUB_OFFLINE, and hub models that fail in a second, not 30."""

import json
import os
import shutil
import socket
import time

import pytest

from nanoGPT import hub
from nanoGPT.augment.teachers import HFTeacher, load_teacher
from nanoGPT.config import ModelConfig
from nanoGPT.errors import UserError
from nanoGPT.model import GPT
from nanoGPT.tokenizer import gpt2_tokenizer

CLOSED_PORT = "http://127.0.0.1:9"  # discard: nothing listens there, a connection is refused at once
NOT_CACHED = "not in the local Hugging Face cache and HF_HUB_OFFLINE is set"


@pytest.fixture
def online(monkeypatch, tmp_path):
    """The hub switched on (no offline variable, no proxy) and an empty Hugging Face cache, so
    nothing downloaded earlier on this machine can answer instead of the hub."""
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", *hub._PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path / "hf-cache"


@pytest.fixture
def listening_endpoint(monkeypatch):
    """HF_ENDPOINT pointing at a local port that accepts connections."""
    server = socket.create_server(("127.0.0.1", 0))
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    yield
    server.close()


def test_endpoint_and_offline_mode_are_read_from_the_environment(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert hub.hub_endpoint() == ("huggingface.co", 443)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example.org:8443/")
    assert hub.hub_endpoint() == ("hub.example.org", 8443)
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_PORT)
    assert hub.hub_endpoint() == ("127.0.0.1", 9)
    monkeypatch.setenv("HF_ENDPOINT", "huggingface")
    with pytest.raises(UserError, match="HF_ENDPOINT"):
        hub.hub_endpoint()
    for value, offline in (("1", True), ("yes", True), ("0", False)):
        monkeypatch.setenv("HF_HUB_OFFLINE", value)
        assert hub.hub_offline() is offline
    # HF_DATASETS_OFFLINE decides for data sets only, as in the datasets library
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert hub.hub_offline(datasets=True) and not hub.hub_offline()


def test_reachability_follows_hf_endpoint(online, monkeypatch, listening_endpoint):
    hub.check_hub_reachable("connect")  # the listening port answers
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_PORT)
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"^cannot reach 127\.0\.0\.1:9 \(.*\); connect$"):
        hub.check_hub_reachable("connect")
    assert time.perf_counter() - start < 2
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline by choice: the cache answers, no check
    hub.check_hub_reachable("connect")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # a direct check proves nothing
    hub.check_hub_reachable("connect")


def test_a_host_that_never_answers_fails_within_the_timeout(online, monkeypatch):
    def hang(*args, **kwargs):
        time.sleep(30)  # a DNS server or firewall that drops the packets
        raise OSError("timed out")  # as the real call would (the thread outlives the test)

    monkeypatch.setattr(hub.socket, "create_connection", hang)
    monkeypatch.setattr(hub, "HUB_TIMEOUT_S", 0.2)
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"cannot reach huggingface\.co:443 \(no answer in 0\.2 s\)"):
        hub.check_hub_reachable("connect")
    assert time.perf_counter() - start < 3  # the 0.2 s timeout, not the 30 s hang (slack for a loaded CI)


def test_unreachable_hub_teacher_and_gpt2_fail_in_seconds(online, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_PORT)
    start = time.perf_counter()
    with pytest.raises(UserError, match="cannot reach 127.0.0.1:9") as err:
        load_teacher("gpt2", "cpu", gpt2_tokenizer())
    assert time.perf_counter() - start < 5
    for what_to_do in ("connect to the Hugging Face hub", "save_pretrained", "teacher=ckpt:<out_dir"):
        assert what_to_do in str(err.value)
    start = time.perf_counter()
    with pytest.raises(UserError, match="cannot reach 127.0.0.1:9") as err:
        GPT.from_pretrained("gpt2", ModelConfig())
    assert time.perf_counter() - start < 5
    assert "init_from=<local folder" in str(err.value) and "save_pretrained" in str(err.value)


def test_offline_and_not_cached_fails_at_once(online, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_PORT)
    start = time.perf_counter()
    with pytest.raises(UserError, match=NOT_CACHED + ".*init_from="):
        GPT.from_pretrained("gpt2", ModelConfig())
    with pytest.raises(UserError, match=NOT_CACHED + ".*ckpt:"):
        HFTeacher("gpt2", "cpu")
    assert time.perf_counter() - start < 5


def cache_as_hub_download(folder: str, cache: str, repo: str) -> None:
    """Lay out `folder` in the Hugging Face cache as a download of `repo` would leave it."""
    commit = "0" * 40
    repo_dir = os.path.join(cache, f"models--{repo.replace('/', '--')}")
    shutil.copytree(folder, os.path.join(repo_dir, "snapshots", commit))
    os.makedirs(os.path.join(repo_dir, "refs"))
    with open(os.path.join(repo_dir, "refs", "main"), "w") as f:
        f.write(commit)


def test_a_cached_model_loads_offline_or_when_the_hub_is_unreachable(
    online, monkeypatch, hf_gpt2_folder, capsys
):
    cache_as_hub_download(hf_gpt2_folder, str(online), "tiny/gpt2")
    with open(os.path.join(hf_gpt2_folder, "config.json")) as f:
        n_embd = json.load(f)["n_embd"]
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_PORT)
    model = GPT.from_pretrained("tiny/gpt2", ModelConfig())  # unreachable: the cached copy, with a warning
    assert model.config.n_embd == n_embd
    assert "warning: cannot reach 127.0.0.1:9" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert HFTeacher("tiny/gpt2", "cpu").vocab_size == 50257


def test_a_local_folder_needs_no_hub(online, monkeypatch, hf_gpt2_folder):
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_PORT)
    assert GPT.from_pretrained(hf_gpt2_folder, ModelConfig()).config.vocab_size == 50257
    assert HFTeacher(hf_gpt2_folder, "cpu").block_size == 64
