"""The Hugging Face hub, checked before anything waits on it.

`huggingface_hub` retries an unreachable host for ~24-32 s before it gives up, and a data
set or model that is not there ends in a traceback. Every hub user here (the data-set
prepare scripts, `GPT.from_pretrained`, the Hugging Face teacher) first asks this module:
is the hub offline by the user's choice (HF_HUB_OFFLINE), and if not, does its host
(HF_ENDPOINT) answer within a second or two? A failure is one UserError line that says what
to do.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from typing import Any
from urllib.parse import urlsplit

from nanoGPT.errors import UserError

DEFAULT_ENDPOINT = "https://huggingface.co"
# one TCP connect (DNS included): a reachable hub answers in well under this even over a
# slow link, an unreachable one is refused at once or never answers
HUB_TIMEOUT_S = 1.5
_TRUE = ("1", "ON", "YES", "TRUE")  # huggingface_hub's reading of a boolean variable
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def _env_true(name: str) -> bool | None:
    value = os.environ.get(name)
    return None if value is None else value.upper() in _TRUE


def hub_offline(datasets: bool = False) -> bool:
    """Whether the user switched the hub off: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), read
    now rather than when huggingface_hub was imported. For `datasets`, HF_DATASETS_OFFLINE,
    when set, decides instead, as it does inside the datasets library."""
    if datasets and _env_true("HF_DATASETS_OFFLINE") is not None:
        return bool(_env_true("HF_DATASETS_OFFLINE"))
    return bool(_env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"))


def hub_endpoint() -> tuple[str, int]:
    """(host, port) of the hub: HF_ENDPOINT, as huggingface_hub reads it, or huggingface.co."""
    url = urlsplit(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    if not url.hostname:
        raise UserError(f"HF_ENDPOINT={os.environ['HF_ENDPOINT']!r} is not a URL like {DEFAULT_ENDPOINT}")
    return url.hostname, url.port or (80 if url.scheme == "http" else 443)


def _connect(address: tuple[str, int], timeout: float) -> None:
    """Open and close one TCP connection, the name lookup included in `timeout` (the socket
    timeout alone does not bound a lookup that waits on a DNS server that never answers)."""
    outcome: dict[str, BaseException | None] = {}

    def attempt() -> None:
        try:
            socket.create_connection(address, timeout=timeout).close()
            outcome["error"] = None
        except OSError as err:
            outcome["error"] = err

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout)
    if "error" not in outcome:
        raise TimeoutError(f"no answer in {timeout:g} s")
    if outcome["error"] is not None:
        raise outcome["error"]


def hub_unreachable(datasets: bool = False) -> str | None:
    """Why the hub's host cannot be reached ("cannot reach HOST:PORT (reason)"), found in at
    most ~1.5 s, or None when it answers. Not checked (None) in offline mode, where the caller
    reads the local cache, which fails at once, nor when a proxy is set (a direct connection
    says nothing about the proxied one)."""
    if hub_offline(datasets) or any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    host, port = hub_endpoint()
    try:
        _connect((host, port), HUB_TIMEOUT_S)
    except OSError as err:
        return f"cannot reach {host}:{port} ({err})"
    return None


def check_hub_reachable(what_to_do: str, datasets: bool = False) -> None:
    """One UserError line ending in `what_to_do` when the hub cannot be reached: in ~1.5 s
    instead of after ~24 s of retries inside huggingface_hub."""
    reason = hub_unreachable(datasets)
    if reason:
        raise UserError(f"{reason}; {what_to_do}")


def in_hub_cache(repo_id: str) -> bool:
    """Whether a model `repo_id` was downloaded before (its config.json is in the local
    Hugging Face cache): a few file look-ups, no network, no transformers import."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id (a path that is not a folder, say): not cached
        return False


def load_pretrained(model_class: str, name_or_path: str, what_to_do: str) -> Any:
    """`transformers.<model_class>.from_pretrained(name_or_path)`, failing fast, in one line.

    A local folder loads as it is. A hub name loads from the local cache alone when the hub
    is offline (HF_HUB_OFFLINE=1) or does not answer the reachability check, and from the hub
    only when it does. What cannot load is one UserError line ending in `what_to_do`, raised
    before transformers is even imported (seconds of its own) when the answer is known.
    """
    if os.path.isdir(name_or_path):
        return _from_pretrained(model_class, name_or_path, what_to_do)
    if hub_offline():
        if not in_hub_cache(name_or_path):
            raise UserError(
                f"{name_or_path!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                + what_to_do
            )
        return _from_pretrained(model_class, name_or_path, what_to_do, local_files_only=True)
    unreachable = hub_unreachable()
    if not unreachable:
        return _from_pretrained(model_class, name_or_path, what_to_do)
    if not in_hub_cache(name_or_path):
        raise UserError(f"{unreachable}; {what_to_do}")
    print(f"warning: {unreachable}; loading the cached copy of {name_or_path}", file=sys.stderr)
    return _from_pretrained(model_class, name_or_path, what_to_do, local_files_only=True)


def _from_pretrained(model_class: str, name_or_path: str, what_to_do: str, **options: Any) -> Any:
    import transformers

    try:
        return getattr(transformers, model_class).from_pretrained(name_or_path, **options)
    except Exception as err:
        # OSError: missing files, no connection; ValueError: a bad id or config. A local folder's
        # files are the user's, so any failure to parse them (UnpicklingError of a damaged
        # pytorch_model.bin, SafetensorError, ...) is theirs to fix too; from the hub anything
        # else stays a traceback
        if not (os.path.isdir(name_or_path) or isinstance(err, (OSError, ValueError))):
            raise
        message = str(err).strip()
        first = message.splitlines()[0][:160] if message else type(err).__name__
        raise UserError(f"could not load {name_or_path!r} ({first}); {what_to_do}") from None
