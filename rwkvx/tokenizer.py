"""Tokenizers for RWKV models: World (65536), GPT-NeoX 20B (50277) and bytes (256).

    tok = Tokenizer.for_vocab_size(model.n_vocab)
    ids = tok.encode("Hello")            # list[int]
    text = tok.decode(ids)               # str; invalid UTF-8 becomes U+FFFD
    dec = tok.stream_decoder()           # for printing tokens as they are sampled
    print(dec.push(token_id), end="")

Every tokenizer maps each token id to a byte string; decoding concatenates them.
World encodes by greedy longest match over the UTF-8 bytes (a C byte trie,
rwkvx/_tokenizer.pyx); 20B uses the Hugging Face `tokenizers` package, imported
only when a 20B tokenizer is first used. Vocabulary files are read once per
process, on first use, and shared by every Tokenizer made from them.
"""
from __future__ import annotations

import ast
import codecs
import functools
import json
import operator
import threading
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from rwkvx.errors import BackendError, MissingDependencyError, TokenError, VocabError

VOCAB_DIR = Path(__file__).with_name("vocab")
WORLD_VOCAB_PATH = VOCAB_DIR / "rwkv_vocab_v20230424.txt"
NEOX20B_PATH = VOCAB_DIR / "20B_tokenizer.json"

WORLD_N_VOCAB = 65536  # World models' embedding rows; the file uses ids 1..65529
NEOX20B_N_VOCAB = 50277
BYTES_N_VOCAB = 256
END_OF_TEXT_ID = 0     # World: not in the vocabulary file; decodes to no bytes

# A vocabulary's table is a list indexed by token id, so it has (largest id + 1) slots however few
# tokens the file lists. Real vocabularies are dense (World: ids 1..65529, 20B: 0..50276), so a table
# is refused when it would be more than twice as long as the number of tokens, or MAX_SPARSE_TABLE
# slots, whichever is more: its memory then stays proportional to the file's own content (at most
# 8 bytes per empty slot, against ~40 per token already held), while small hand-made vocabularies may
# still use sparse ids (a table of 2**20 slots is 8 MiB). Without a bound one 20-byte line,
# `1000000000 'ab' 2`, would cost 8 GB. A model's padded n_vocab (65536 for World's 65529 ids) fits.
MAX_SPARSE_TABLE = 1 << 20


def _max_table_size(n_tokens: int) -> int:
    """The most id slots a vocabulary of n_tokens tokens may have (see MAX_SPARSE_TABLE)."""
    return max(2 * n_tokens, MAX_SPARSE_TABLE)


def _check_dense(what: str, largest_id: int, n_tokens: int) -> None:
    """Raise VocabError if a table up to largest_id would be implausibly sparse for n_tokens tokens."""
    if largest_id >= _max_table_size(n_tokens):
        raise VocabError(f"{what} has token id {largest_id} but only {n_tokens} tokens: ids this sparse "
                         f"(the largest must be below max(2 * tokens, {MAX_SPARSE_TABLE}) = "
                         f"{_max_table_size(n_tokens)}) mean a corrupt file")


class _Vocab:
    """What a loaded tokenizer knows: how to encode, and each token's bytes.

    token_bytes[i] is the bytes of token i, or None if i is not a token.
    encode(data: bytes | str) -> list[int].
    """

    def __init__(self, token_bytes: list, encode: Callable):
        self.token_bytes = token_bytes
        self.encode = encode


class Tokenizer:
    """Text <-> token ids for one vocabulary. Loads its vocabulary on first use.

    Make one with for_vocab_size(), world(), neox20b(), bytes() or from_file().
    """

    def __init__(self, name: str, n_vocab: int, load: Callable[[], _Vocab]):
        self.name = name
        self.n_vocab = n_vocab
        self._load = load
        self._vocab = None
        self._lock = threading.Lock()

    def __repr__(self):
        return f"Tokenizer(name={self.name!r}, n_vocab={self.n_vocab})"

    # ---- constructors -------------------------------------------------------------------

    @classmethod
    def for_vocab_size(cls, n_vocab: int) -> "Tokenizer":
        """The tokenizer that models with n_vocab output logits were trained with."""
        makers = {WORLD_N_VOCAB: cls.world, NEOX20B_N_VOCAB: cls.neox20b, BYTES_N_VOCAB: cls.bytes}
        if n_vocab not in makers:
            known = ", ".join(f"{n} ({maker.__name__})" for n, maker in makers.items())
            raise VocabError(f"no known tokenizer has a vocabulary of {n_vocab} tokens (known: {known}); "
                             "pass one explicitly, e.g. Tokenizer.from_file(path)")
        return makers[n_vocab]()

    @classmethod
    def world(cls) -> "Tokenizer":
        """RWKV World tokenizer (RWKV v5, v6, v7 World models; n_vocab 65536)."""
        return cls("world", WORLD_N_VOCAB, lambda: _load_world_vocab(str(WORLD_VOCAB_PATH), WORLD_N_VOCAB))

    @classmethod
    def neox20b(cls) -> "Tokenizer":
        """GPT-NeoX 20B tokenizer (RWKV v4 Pile models; n_vocab 50277). Needs `tokenizers`."""
        return cls("20B", NEOX20B_N_VOCAB, lambda: _load_hf_vocab(str(NEOX20B_PATH)))

    @classmethod
    def bytes(cls) -> "Tokenizer":
        """Byte-level tokenizer: token i is the byte i (n_vocab 256)."""
        return cls("bytes", BYTES_N_VOCAB, _bytes_vocab)

    @classmethod
    def from_file(cls, path, n_vocab: int | None = None) -> "Tokenizer":
        """A tokenizer from a World-format vocabulary (.txt) or a Hugging Face tokenizer JSON.

        The file is read now, to learn its vocabulary size: n_vocab defaults to
        the largest token id + 1 and may be given larger (models pad it), up to
        max(2 * tokens in the file, MAX_SPARSE_TABLE). Raises VocabError for a
        file that cannot be read or is malformed, or whose ids are implausibly sparse.
        """
        if n_vocab is not None and (isinstance(n_vocab, bool) or not isinstance(n_vocab, (int, np.integer))):
            raise VocabError(f"n_vocab must be an int or None, got {type(n_vocab).__name__} {n_vocab!r}")
        n_vocab = None if n_vocab is None else int(n_vocab)
        path = Path(path)
        try:
            with open(path, "rb") as f:
                is_json = f.read(64).lstrip().startswith(b"{")
        except OSError as e:
            raise VocabError(f"cannot read tokenizer file {path}: {e}") from e
        vocab = _load_hf_vocab(str(path)) if is_json else _load_world_vocab(str(path), None)
        file_n_vocab = len(vocab.token_bytes)
        if n_vocab is None:
            n_vocab = file_n_vocab
        elif n_vocab < file_n_vocab:
            raise VocabError(f"{path} has token ids up to {file_n_vocab - 1}, more than n_vocab={n_vocab}")
        n_tokens = sum(data is not None for data in vocab.token_bytes)
        if n_vocab > _max_table_size(n_tokens):
            raise VocabError(f"n_vocab={n_vocab} is too large for {path}, which has {n_tokens} tokens "
                             f"(at most max(2 * tokens, {MAX_SPARSE_TABLE}) = {_max_table_size(n_tokens)})")
        if n_vocab > file_n_vocab:
            vocab = _Vocab(vocab.token_bytes + [None] * (n_vocab - file_n_vocab), vocab.encode)
        tokenizer = cls(path.name, n_vocab, lambda: vocab)
        tokenizer._vocab = vocab
        return tokenizer

    # ---- encoding and decoding ----------------------------------------------------------

    def _loaded(self) -> _Vocab:
        if self._vocab is None:
            with self._lock:
                if self._vocab is None:
                    self._vocab = self._load()
        return self._vocab

    def encode(self, text: str | bytes) -> list[int]:
        """Token ids of text (a str, or bytes for the World and bytes tokenizers)."""
        if not isinstance(text, (str, bytes, bytearray, memoryview)):
            raise TokenError(f"encode() takes str or bytes, not {type(text).__name__}")
        return self._loaded().encode(text)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of a sequence of token ids (ints, or a 1-D integer NumPy array).

        Raises TokenError if an id is not an integer or not a token of this vocabulary.
        """
        table = self._loaded().token_bytes
        n = len(table)
        ids = self._id_list(ids)
        parts = [table[i] if 0 <= i < n else None for i in ids]
        try:
            return b"".join(parts)
        except TypeError:
            position = next(k for k, part in enumerate(parts) if part is None)
            raise TokenError(self._bad_id_message(ids[position], position)) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of token ids; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token. Raises TokenError if token_id is not an integer or not a token."""
        table = self._loaded().token_bytes
        token_id = self._id(token_id)
        if not 0 <= token_id < len(table) or table[token_id] is None:
            raise TokenError(self._bad_id_message(token_id))
        return table[token_id]

    def stream_decoder(self) -> "StreamDecoder":
        """An incremental decoder: push token ids one at a time, get printable text."""
        return StreamDecoder(self.token_bytes)

    def _id_list(self, ids) -> list[int]:
        """ids (a 1-D iterable of ints or a 1-D integer array) as a list of Python ints, else TokenError.

        Floats (65.0 too), bools, strings and nested sequences are refused, as Model.forward refuses
        them: reading 65.9 as 65, or a mask as ids, would be a wrong answer rather than an error.
        """
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1 or ids.dtype.kind not in "iu":
                raise TokenError(f"token ids must be integers in [0, {self.n_vocab}) in a 1-D sequence; "
                                 f"got a {ids.dtype} array of shape {ids.shape}")
            return ids.tolist()
        if isinstance(ids, str):
            raise TokenError(f"token ids must be integers in [0, {self.n_vocab}), got the str {ids[:40]!r} "
                             "(encode() turns text into ids)")
        try:
            ids = ids if type(ids) is list else list(ids)
        except TypeError:
            raise TokenError(f"token ids must be integers in [0, {self.n_vocab}) in a sequence, got "
                             f"{type(ids).__name__} {_short_repr(ids)} (for one id use token_bytes())") from None
        if set(map(type, ids)) <= {int}:  # the common case (plain ints; not bools), checked at C speed
            return ids
        return [self._id(i, position) for position, i in enumerate(ids)]

    def _id(self, token_id, position=None) -> int:
        """token_id as a Python int if it is an integer (int, NumPy integer, 0-d integer array), else TokenError."""
        if not isinstance(token_id, (bool, np.bool_)):
            try:
                return operator.index(token_id)
            except TypeError:
                pass
        where = "" if position is None else f" (position {position})"
        raise TokenError(f"token ids must be integers in [0, {self.n_vocab}), got {type(token_id).__name__} "
                         f"{_short_repr(token_id)}{where}")

    def _bad_id_message(self, token_id, position=None) -> str:
        where = "" if position is None else f" at position {position}"
        return f"token id {token_id}{where} is not a token of the {self.name} tokenizer (n_vocab {self.n_vocab})"


class StreamDecoder:
    """Turns token ids, pushed one at a time, into text that is safe to print.

    push(id) returns only complete UTF-8 characters: an incomplete multi-byte
    character split over tokens is held back until its last byte arrives, and
    bytes that can no longer become valid UTF-8 come out as U+FFFD at once.
    flush() returns what is held back (as U+FFFD) and starts afresh. The
    concatenation of all outputs equals Tokenizer.decode() of all the ids.
    """

    def __init__(self, token_bytes: Callable[[int], bytes]):
        self._token_bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self._token_bytes(token_id))

    def flush(self) -> str:
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


def _short_repr(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ---- vocabularies -----------------------------------------------------------------------


def _utf8(text: str | bytes) -> bytes:
    if isinstance(text, str):
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TokenError(f"text cannot be encoded as UTF-8 (lone surrogate at index {e.start})") from None
    return bytes(text)


def _bytes_vocab() -> _Vocab:
    return _Vocab([bytes([i]) for i in range(BYTES_N_VOCAB)], lambda text: list(_utf8(text)))


def _parse_world_line(line: str, where: str) -> tuple[int, bytes]:
    """One line `<id> <python literal str or bytes> <byte length>` -> (id, token bytes)."""
    first, last = line.find(" "), line.rfind(" ")
    if first <= 0 or last <= first:
        raise VocabError(f"{where}: expected `<id> <literal> <byte length>`, got {line[:80]!r}")
    try:
        token_id, length = int(line[:first]), int(line[last + 1:])
        literal = ast.literal_eval(line[first + 1:last])
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        raise VocabError(f"{where}: cannot parse {line[:80]!r}: {e}") from None
    if isinstance(literal, str):
        try:
            literal = literal.encode("utf-8")
        except UnicodeEncodeError:
            raise VocabError(f"{where}: token text is not encodable as UTF-8") from None
    if not isinstance(literal, bytes):
        raise VocabError(f"{where}: token must be a str or bytes literal, got {type(literal).__name__}")
    if not literal:
        raise VocabError(f"{where}: token is empty (0 bytes)")
    if len(literal) != length:
        raise VocabError(f"{where}: token has {len(literal)} bytes but the line says {length}")
    if token_id < 0:
        raise VocabError(f"{where}: negative token id {token_id}")
    return token_id, literal


@functools.lru_cache(maxsize=None)
def _load_world_vocab(path: str, n_vocab: int | None) -> _Vocab:
    """Parses a World-format vocabulary and builds its trie. Cached: once per file per process."""
    try:
        from rwkvx._tokenizer import WorldTrie
    except ImportError as e:
        raise BackendError("the rwkvx._tokenizer extension is not built; reinstall rwkvx "
                           "or run `python setup.py build_ext --inplace`") from e
    by_id: dict[int, bytes] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line_number, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                token_id, data = _parse_world_line(line, f"{path}:{line_number}")
                if token_id in by_id:
                    raise VocabError(f"{path}:{line_number}: token id {token_id} appears twice")
                by_id[token_id] = data
    except (OSError, UnicodeDecodeError) as e:
        raise VocabError(f"cannot read World vocabulary {path}: {e}") from e
    if not by_id:
        raise VocabError(f"World vocabulary {path} has no tokens")
    _check_dense(f"World vocabulary {path}", max(by_id), len(by_id))
    size = max(by_id) + 1 if n_vocab is None else n_vocab
    if max(by_id) >= size:
        raise VocabError(f"World vocabulary {path} has token id {max(by_id)} >= n_vocab {size}")
    # Greedy matching never gets stuck only if every single byte is a token.
    missing = sorted(set(range(256)) - {data[0] for data in by_id.values() if len(data) == 1})
    if missing:
        raise VocabError(f"World vocabulary {path} lacks single-byte tokens for {len(missing)} "
                         f"byte values (first: 0x{missing[0]:02x}); some text could not be encoded")
    try:
        trie = WorldTrie(list(by_id.values()), list(by_id))
    except ValueError as e:
        raise VocabError(f"World vocabulary {path}: {e}") from None
    table = [None] * size
    for token_id, data in by_id.items():
        table[token_id] = data
    if table[END_OF_TEXT_ID] is None:
        table[END_OF_TEXT_ID] = b""

    def encode(text):
        return trie.encode(_utf8(text)).tolist()

    return _Vocab(table, encode)


def _import_hf_tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise MissingDependencyError("this tokenizer needs the Hugging Face `tokenizers` package: "
                        "pip install rwkvx[tokenizers]") from None
    return tokenizers


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE (GPT-2) map from printable stand-in character to the byte it stands for.

    Bytes that are printable and not space keep their own character; the other
    68 bytes, in increasing order, take the characters U+0100, U+0101, ...
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    stand_in = {b: b for b in printable}
    next_char = 0x100
    for b in range(256):
        if b not in stand_in:
            stand_in[b] = next_char
            next_char += 1
    return {chr(c): b for b, c in stand_in.items()}


@functools.lru_cache(maxsize=None)
def _load_hf_vocab(path: str) -> _Vocab:
    """A Hugging Face byte-level BPE tokenizer JSON (e.g. GPT-NeoX 20B). Cached per file."""
    tokenizers = _import_hf_tokenizers()
    try:
        hf = tokenizers.Tokenizer.from_file(path)
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except Exception as e:  # tokenizers raises its own Exception type for bad files
        raise VocabError(f"cannot load tokenizer {path}: {e}") from e
    if (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise VocabError(f"{path}: only byte-level BPE tokenizers are supported "
                         f"(decoder is {(spec.get('decoder') or {}).get('type')})")
    alphabet = _byte_level_alphabet()
    vocab = hf.get_vocab(with_added_tokens=False)
    added_tokens = spec.get("added_tokens") or []
    try:
        added_ids = {added["id"]: b"" if added.get("special") else added["content"].encode("utf-8")
                     for added in added_tokens}
    except (TypeError, KeyError, AttributeError, UnicodeEncodeError) as e:
        raise VocabError(f"{path}: malformed added_tokens entry ({type(e).__name__}: {e})") from None
    ids = [*vocab.values(), *added_ids]
    if not ids or not all(type(i) is int and i >= 0 for i in ids):
        raise VocabError(f"{path}: token ids must be non-negative integers (and there must be some)")
    # get_vocab_size() counts tokens; the table needs the largest id + 1 slots, bounded like World's.
    _check_dense(f"tokenizer {path}", max(ids), len(set(ids)))
    table = [None] * max(max(ids) + 1, hf.get_vocab_size(with_added_tokens=True))
    for text, token_id in vocab.items():
        if all(c in alphabet for c in text):
            table[token_id] = bytes(alphabet[c] for c in text)
    # Added tokens decode to their own text, except special ones (like
    # <|endoftext|>), which decode to nothing, as tokenizers' decode() does by default.
    for token_id, data in added_ids.items():
        table[token_id] = data

    def encode(text):
        if not isinstance(text, str):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as e:
                raise TokenError(f"{Path(path).name} encodes text only, and these bytes are not UTF-8: {e}") from None
        _utf8(text)  # raise TokenError on lone surrogates, like the other tokenizers
        return hf.encode(text).ids

    return _Vocab(table, encode)
