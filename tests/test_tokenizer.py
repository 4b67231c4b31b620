"""Tokenizers: World (C trie) against an independent pure-Python greedy trie, the
published World test ids, 20B against Hugging Face `tokenizers`, bytes, and the
incremental stream decoder."""
import ast
import json
import random
import threading
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from rwkvx.errors import MissingDependencyError, TokenError, VocabError
from rwkvx.tokenizer import Tokenizer, VOCAB_DIR

WORLD_VOCAB = VOCAB_DIR / "rwkv_vocab_v20230424.txt"
NEOX_JSON = VOCAB_DIR / "20B_tokenizer.json"
REPO = Path(__file__).resolve().parents[1]

# From SPEC.md §5 (rwkv.cpp's World tokenizer test): produced by the original tokenizer.
SPEC_TEXT = "I'll 'd test блабла 以下は、]) -> <|endoftext|><|padding|> int"
SPEC_IDS = [74, 5229, 274, 101, 32223, 5092, 27980, 2795, 27980, 33, 10399, 10258, 10139, 10079,
            1682, 3463, 295, 125, 25258, 7588, 2318, 125, 790, 125, 49520, 125, 63, 21888]

CORPUS_SEED = 1234
CORPUS_CHUNKS = 400          # chunks encoded one by one (boundaries vary), then all joined
RANDOM_BYTE_STRINGS = 300

SNIPPETS = {
    "english": "The quick brown fox jumps over the lazy dog. It's 3:45 p.m.; don't panic -- "
               "RWKV models (v4, v5.1, v5.2, v6, v7) run on CPUs! Mr. O'Neil's e-mail: a.b@c.org. ",
    "code": "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n\n\tint main(void) "
            "{ for (size_t i = 0; i < n; i++) y[i] += a * x[i]; }\r\n#include <stdio.h>\n",
    "chinese": "以下是一个关于人工智能的简短介绍。机器学习模型可以生成文本、翻译语言，并回答问题。",
    "japanese": "以下は、日本語の文章です。東京は晴れ、カタカナとひらがなを混ぜて書きます。ｶﾞｷﾞ",
    "russian": "Съешь же ещё этих мягких французских булок, да выпей чаю. блабла Ёлка!",
    "emoji": "😀 👍🏽 🇯🇵 👨‍👩‍👧‍👦 ❤️ 🧑🏻‍💻 🎉🎉🎉 ✅❌ ∑∫√∞ ½ ™ © — “quotes” ‘single’ …",
    "spaces": " \n\n\n  \t\t   " + " " * 130 + "\n" + "-" * 90 + "#" * 85 + "=" * 40 + "\r\n",
}


def read_vocab_file(path):
    """{id: token bytes}, parsed here independently of rwkvx."""
    vocab = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        token_id, rest = line.split(" ", 1)
        literal, length = rest.rsplit(" ", 1)
        value = ast.literal_eval(literal)
        data = value.encode("utf-8") if isinstance(value, str) else value
        assert len(data) == int(length)
        vocab[int(token_id)] = data
    return vocab


TOKEN = "token"  # key of a node's token id; byte keys are ints, so it cannot clash


def reference_trie(vocab):
    root = {}
    for token_id, data in vocab.items():
        node = root
        for byte in data:
            node = node.setdefault(byte, {})
        node[TOKEN] = token_id
    return root


def reference_encode(root, data):
    """Greedy longest match, written as plainly as possible."""
    ids, pos = [], 0
    while pos < len(data):
        node, best, i = root, None, pos
        while i < len(data) and data[i] in node:
            node = node[data[i]]
            i += 1
            if TOKEN in node:
                best = (node[TOKEN], i)
        token_id, pos = best
        ids.append(token_id)
    return ids


@pytest.fixture(scope="module")
def world_vocab():
    return read_vocab_file(WORLD_VOCAB)


@pytest.fixture(scope="module")
def world_reference(world_vocab):
    return reference_trie(world_vocab)


@pytest.fixture(scope="module")
def world():
    return Tokenizer.world()


def random_unicode_text(rng, length):
    """Characters from many scripts and planes, including combining marks and non-characters."""
    ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF), (0x900, 0x97F),
              (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF), (0x1F300, 0x1FAFF),
              (0x20000, 0x2A6DF), (0x0300, 0x036F), (0xE000, 0xE0FF), (0xFFFE, 0xFFFF), (0x10FFFE, 0x10FFFF)]
    chars = []
    for _ in range(length):
        low, high = rng.choice(ranges)
        chars.append(chr(rng.randint(low, high)))
    return "".join(chars)


@pytest.fixture(scope="module")
def corpus_chunks():
    rng = random.Random(CORPUS_SEED)
    sources = [
        (REPO / "rwkvx" / "tokenizer.py").read_text(encoding="utf-8"),
        (REPO / "rwkvx" / "_kernels" / "tokenizer" / "world_trie.c").read_text(encoding="utf-8"),
    ]
    chunks = []
    for _ in range(CORPUS_CHUNKS):
        kind = rng.randrange(4)
        if kind == 0:  # a mix of snippets, cut at random places (also inside words)
            text = "".join(rng.choice(list(SNIPPETS.values())) for _ in range(rng.randint(1, 6)))
            start = rng.randrange(len(text))
            text = text[start:start + rng.randint(1, 400)]
        elif kind == 1:
            source = rng.choice(sources)
            start = rng.randrange(len(source))
            text = source[start:start + rng.randint(1, 2000)]
        elif kind == 2:
            text = random_unicode_text(rng, rng.randint(1, 200))
        else:
            text = rng.choice(list(SNIPPETS.values())) * rng.randint(1, 20)
        chunks.append(text)
    return chunks


# ---- World ----------------------------------------------------------------------------------


def test_world_encodes_the_spec_example_exactly(world):
    assert world.encode(SPEC_TEXT) == SPEC_IDS
    assert world.decode(SPEC_IDS) == SPEC_TEXT
    assert world.decode(np.array(SPEC_IDS, dtype=np.int32)) == SPEC_TEXT


def test_world_matches_pure_python_greedy_on_mixed_corpus(world, world_reference, corpus_chunks):
    for text in corpus_chunks:
        expected = reference_encode(world_reference, text.encode("utf-8"))
        assert world.encode(text) == expected, text[:80]
        assert world.decode(expected) == text
    everything = "".join(corpus_chunks)
    assert len(everything.encode("utf-8")) > 100_000  # long enough to take the GIL-free path
    assert world.encode(everything) == reference_encode(world_reference, everything.encode("utf-8"))


def test_world_bytes_round_trip_including_invalid_utf8(world, world_reference):
    rng = random.Random(CORPUS_SEED + 1)
    for _ in range(RANDOM_BYTE_STRINGS):
        kind = rng.randrange(3)
        if kind == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
        elif kind == 1:  # valid UTF-8 with some bytes replaced: truncated and stray sequences
            data = bytearray(random_unicode_text(rng, rng.randint(1, 100)).encode("utf-8"))
            for _ in range(rng.randint(1, 5)):
                data[rng.randrange(len(data))] = rng.choice([0x80, 0xBF, 0xC0, 0xC3, 0xE4, 0xF0, 0xF8, 0xFF])
            data = bytes(data)
        else:  # bytes only World's byte tokens can cover
            data = bytes(rng.choice([0x00, 0x7F, 0xC0, 0xC1, 0xF5, 0xFE, 0xFF]) for _ in range(rng.randint(1, 50)))
        ids = world.encode(data)
        assert ids == reference_encode(world_reference, data)
        assert world.decode_bytes(ids) == data
        assert world.decode(ids) == data.decode("utf-8", errors="replace")


def test_world_decode_is_concatenation_of_token_bytes(world, world_vocab):
    rng = random.Random(CORPUS_SEED + 2)
    token_ids = sorted(world_vocab)
    for _ in range(100):
        ids = [rng.choice(token_ids) for _ in range(rng.randint(0, 50))]
        expected = b"".join(world_vocab[i] for i in ids)
        assert world.decode_bytes(ids) == expected
        assert world.decode(ids) == expected.decode("utf-8", errors="replace")


def test_world_end_of_text_and_invalid_ids(world, world_vocab):
    assert 0 not in world_vocab
    assert world.decode_bytes([0]) == b""
    assert world.n_vocab == 65536 and world.name == "world"
    for bad in (-1, max(world_vocab) + 1, 65535, 65536, 10**12):
        with pytest.raises(TokenError, match=str(bad)):
            world.decode([5, bad])
        with pytest.raises(TokenError):
            world.token_bytes(bad)


def test_world_edge_inputs(world):
    assert world.encode("") == []
    assert world.decode([]) == ""
    with pytest.raises(TokenError, match="surrogate"):
        world.encode("a\udc80b")
    for not_text in (123, ["a"], np.frombuffer(b"abc", np.uint8), None):
        with pytest.raises(TokenError, match="encode.. takes str or bytes"):
            world.encode(not_text)


def test_world_concurrent_long_encodes_agree(world, corpus_chunks):
    text = "".join(corpus_chunks)
    expected = world.encode(text)
    results = [None] * 4

    def work(k):
        results[k] = world.encode(text)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == expected for r in results)


def test_vocab_is_loaded_lazily_and_once():
    a, b = Tokenizer.world(), Tokenizer.world()
    assert a._vocab is None  # nothing parsed until first use
    a.encode("x")
    b.encode("y")
    assert a._vocab is b._vocab


# ---- World-format files and the trie itself ----------------------------------------------


def write_vocab(path, entries):
    """entries: (id, python literal text, byte length) -> a World-format file."""
    path.write_text("".join(f"{i} {lit} {n}\n" for i, lit, n in entries), encoding="utf-8")
    return path


def single_byte_entries():
    return [(b + 1, repr(bytes([b])), 1) for b in range(256)]


def test_small_vocab_greedy_by_hand(tmp_path):
    extra = [(300, "'ab'", 2), (301, "'abc'", 3), (302, "'bcd'", 3), (303, "'é'", 2), (304, "b'\\xff\\xfe'", 2)]
    tok = Tokenizer.from_file(write_vocab(tmp_path / "v.txt", single_byte_entries() + extra))
    a, b, c, d = (ord(ch) + 1 for ch in "abcd")
    assert tok.n_vocab == 305
    assert tok.encode("abcd") == [301, d]          # longest first, not the best overall split
    assert tok.encode("abd") == [300, d]
    assert tok.encode("bcdab") == [302, 300]
    assert tok.encode("éa") == [303, a]
    assert tok.encode(b"\xff\xfe\xff") == [304, 0xFF + 1]
    assert tok.decode_bytes([301, 304, 0]) == b"abc\xff\xfe"   # id 0 is end of text


@pytest.mark.parametrize("line, reason", [
    ("257 'ab' 3", "bytes"),                         # byte length disagrees
    ("257 __import__('os') 3", "parse"),             # not a literal: never evaluated
    ("257 42 2", "str or bytes"),
    ("1 'x' 1", "twice"),                            # duplicate id
    ("257 'a' 1", "same bytes"),                     # duplicate bytes
    ("257 '' 0", "empty"),
    ("-3 'zz' 2", "negative"),
    ("garbage", "expected"),
])
def test_bad_vocab_files_raise_vocab_error(tmp_path, line, reason):
    path = write_vocab(tmp_path / "bad.txt", single_byte_entries())
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(VocabError, match=reason):
        Tokenizer.from_file(path)


def test_vocab_without_every_single_byte_is_refused(tmp_path):
    entries = single_byte_entries()[1:]  # no token for byte 0x00
    with pytest.raises(VocabError, match="0x00"):
        Tokenizer.from_file(write_vocab(tmp_path / "v.txt", entries))


def test_from_file_n_vocab(tmp_path):
    path = write_vocab(tmp_path / "v.txt", single_byte_entries())
    assert Tokenizer.from_file(path, n_vocab=300).n_vocab == 300
    with pytest.raises(TokenError, match="260"):
        Tokenizer.from_file(path).decode([260])
    with pytest.raises(VocabError, match="n_vocab"):
        Tokenizer.from_file(path, n_vocab=100)
    with pytest.raises(VocabError, match="cannot read"):
        Tokenizer.from_file(tmp_path / "missing.txt")


def test_world_from_file_equals_world(world):
    tok = Tokenizer.from_file(WORLD_VOCAB)
    assert tok.n_vocab == 65530
    assert tok.encode(SPEC_TEXT) == world.encode(SPEC_TEXT)


def test_trie_reports_bad_keys_and_unmatched_bytes():
    from rwkvx._tokenizer import WorldTrie
    with pytest.raises(ValueError, match="same bytes"):
        WorldTrie([b"a", b"b", b"a"], [1, 2, 3])
    with pytest.raises(ValueError, match="no bytes"):
        WorldTrie([b"a", b""], [1, 2])
    with pytest.raises(ValueError, match="outside"):
        WorldTrie([b"a"], [-1])
    trie = WorldTrie([b"a", b"ab"], [7, 8])
    assert trie.node_count == 3
    assert trie.encode(b"aba").tolist() == [8, 7]
    with pytest.raises(ValueError, match="0x63 at offset 2"):
        trie.encode(b"abc")


# ---- bytes ------------------------------------------------------------------------------------


def test_bytes_tokenizer():
    tok = Tokenizer.bytes()
    text = SPEC_TEXT + SNIPPETS["emoji"]
    assert tok.encode(text) == list(text.encode("utf-8"))
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode_bytes(range(256)) == bytes(range(256))
    with pytest.raises(TokenError):
        tok.decode([256])
    with pytest.raises(TokenError):
        tok.decode([-1])


# ---- 20B --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_neox():
    tokenizers = pytest.importorskip("tokenizers", reason="Hugging Face `tokenizers` is not installed "
                                                          "(pip install rwkvx[tokenizers])")
    return tokenizers.Tokenizer.from_file(str(NEOX_JSON))


def test_neox20b_matches_hf_tokenizers(hf_neox, corpus_chunks):
    tok = Tokenizer.neox20b()
    assert tok.n_vocab == 50277 == hf_neox.get_vocab_size(with_added_tokens=True)
    for text in corpus_chunks + [SPEC_TEXT]:
        ids = hf_neox.encode(text).ids
        assert tok.encode(text) == ids
        assert tok.decode(ids) == hf_neox.decode(ids)
        # The normalizer is NFC and <|endoftext|> / <|padding|> decode to nothing.
        expected = unicodedata.normalize("NFC", text).replace("<|endoftext|>", "").replace("<|padding|>", "")
        assert tok.decode(ids) == expected


def test_neox20b_decodes_every_token_like_hf(hf_neox):
    tok = Tokenizer.neox20b()
    rng = random.Random(CORPUS_SEED + 3)
    for _ in range(200):
        ids = [rng.randrange(tok.n_vocab) for _ in range(rng.randint(1, 30))]
        assert tok.decode(ids) == hf_neox.decode(ids)
    with pytest.raises(TokenError):
        tok.decode([50277])


def test_missing_tokenizers_package_gives_install_hint(tmp_path, monkeypatch):
    copy = tmp_path / "20B_tokenizer.json"  # a new path, so no cached load is reused
    copy.write_bytes(NEOX_JSON.read_bytes())
    monkeypatch.setitem(__import__("sys").modules, "tokenizers", None)  # makes `import tokenizers` fail
    with pytest.raises(MissingDependencyError, match=r"pip install rwkvx\[tokenizers\]"):
        Tokenizer.from_file(copy)


# ---- stream decoder -----------------------------------------------------------------------------


def byte_token_ids(vocab_by_bytes, data):
    """Ids of single-byte tokens spelling data, so every multi-byte character is split."""
    return [vocab_by_bytes[bytes([b])] for b in data]


def assert_stream_matches(tok, ids):
    """Pushed piece by piece, the text is never broken and ends equal to decode()."""
    decoder = tok.stream_decoder()
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == tok.decode(ids)
    return pieces


def test_stream_decoder_holds_back_split_characters(world, world_vocab):
    by_bytes = {data: i for i, data in world_vocab.items()}
    text = SNIPPETS["chinese"] + SNIPPETS["emoji"] + SNIPPETS["russian"]
    ids = byte_token_ids(by_bytes, text.encode("utf-8"))
    pieces = assert_stream_matches(world, ids)
    assert "\ufffd" not in "".join(pieces)
    emitted = ""
    for piece in pieces:
        emitted += piece
        assert text.startswith(emitted)  # only whole characters, in order
    first = text.encode("utf-8")[:3]     # "以" split into 3 tokens: nothing until the last
    assert pieces[:3] == ["", "", "以"] and first == "以".encode("utf-8")


def test_stream_decoder_replaces_bytes_once_they_cannot_complete(world, world_vocab):
    by_bytes = {data: i for i, data in world_vocab.items()}
    decoder = world.stream_decoder()
    assert decoder.push(by_bytes[b"\xe4"]) == ""          # could still become a character
    assert decoder.push(by_bytes[b"A"]) == "\ufffdA"       # now it cannot
    assert decoder.push(by_bytes[b"\xff"]) == "\ufffd"     # never valid: replaced at once
    assert decoder.push(by_bytes[b"\xf0"]) == ""
    assert decoder.flush() == "\ufffd"                     # end of stream: incomplete tail
    assert decoder.flush() == ""
    with pytest.raises(TokenError):
        decoder.push(65535)


def test_stream_decoder_equals_full_decode_on_random_ids(world, world_vocab):
    rng = random.Random(CORPUS_SEED + 4)
    token_ids = sorted(world_vocab)
    for _ in range(200):
        ids = [rng.choice(token_ids) for _ in range(rng.randint(0, 40))]
        assert_stream_matches(world, ids)
    bytes_tok = Tokenizer.bytes()
    for _ in range(200):
        assert_stream_matches(bytes_tok, [rng.randrange(256) for _ in range(rng.randint(0, 40))])


def test_stream_decoder_on_20b_byte_level_pieces(hf_neox):
    tok = Tokenizer.neox20b()
    text = SNIPPETS["emoji"] + SNIPPETS["japanese"]
    ids = tok.encode(text)
    assert any(tok.token_bytes(i).decode("utf-8", errors="replace") != tok.token_bytes(i).decode(
        "utf-8", errors="ignore") for i in ids)  # some token really ends inside a character
    pieces = assert_stream_matches(tok, ids)
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)


# ---- choosing a tokenizer -------------------------------------------------------------------------


@pytest.mark.parametrize("n_vocab, name", [(65536, "world"), (50277, "20B"), (256, "bytes")])
def test_for_vocab_size_picks_the_tokenizer(n_vocab, name):
    tok = Tokenizer.for_vocab_size(n_vocab)
    assert (tok.name, tok.n_vocab) == (name, n_vocab)


@pytest.mark.parametrize("n_vocab", [0, -1, 255, 257, 50276, 50278, 65529, 65530, 65535, 65537, 100000])
def test_for_vocab_size_refuses_unknown_sizes(n_vocab):
    with pytest.raises(VocabError, match=str(n_vocab)):
        Tokenizer.for_vocab_size(n_vocab)


# ---- robustness: sparse vocabularies and ids that are not integers ---------------------------------------


def test_sparse_world_vocab_is_refused_before_allocating_its_table(tmp_path):
    """The id table is a list of max id + 1 slots: one line `1000000000 'ab' 2` must not cost 8 GB.
    The largest id must be below max(2 * tokens, 2**20) (rwkvx.tokenizer.MAX_SPARSE_TABLE is 2**20)."""
    MAX_SPARSE_TABLE = 2**20
    dense_enough = write_vocab(tmp_path / "ok.txt", single_byte_entries() + [(MAX_SPARSE_TABLE - 1, "'ab'", 2)])
    assert Tokenizer.from_file(dense_enough).n_vocab == MAX_SPARSE_TABLE
    for token_id in (MAX_SPARSE_TABLE, 10**7):
        path = write_vocab(tmp_path / f"sparse{token_id}.txt", single_byte_entries() + [(token_id, "'ab'", 2)])
        with pytest.raises(VocabError, match=rf"token id {token_id} but only 257 tokens.*corrupt"):
            Tokenizer.from_file(path)
    with pytest.raises(VocabError, match=r"n_vocab=100000000 is too large for .*v.txt, which has 257 tokens"):
        Tokenizer.from_file(write_vocab(tmp_path / "v.txt", single_byte_entries()), n_vocab=10**8)
    with pytest.raises(VocabError, match="n_vocab must be an int"):
        Tokenizer.from_file(tmp_path / "v.txt", n_vocab="300")


def test_sparse_hf_vocab_is_refused(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    bpe = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
           "end_of_word_suffix": None, "fuse_unk": False, "vocab": {"a": 0, "b": 10**7}, "merges": []}
    level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
            "pre_tokenizer": level, "post_processor": None, "decoder": level, "model": bpe}
    path = tmp_path / "sparse.json"
    path.write_text(json.dumps(spec))
    tokenizers.Tokenizer.from_file(str(path))  # a file `tokenizers` itself accepts
    with pytest.raises(VocabError, match=r"token id 10000000 but only 2 tokens"):
        Tokenizer.from_file(path)


BAD_ID_SEQUENCES = [[65.0], [None], ["a"], [[1, 2]], [True], [65, 1.5], np.array([[65, 66]]), np.array([65.0]),
                    np.array([True]), "65", 65, None, np.int64(65)]
BAD_IDS = [65.0, None, "a", [1, 2], True, np.array([[1, 2]]), np.array([65]), np.float64(65), b"A"]


@pytest.mark.parametrize("ids", BAD_ID_SEQUENCES, ids=repr)
def test_decode_refuses_ids_that_are_not_integers(ids):
    tok = Tokenizer.bytes()
    with pytest.raises(TokenError, match=r"integers in \[0, 256\)"):
        tok.decode(ids)
    with pytest.raises(TokenError, match=r"integers in \[0, 256\)"):
        tok.decode_bytes(ids)


@pytest.mark.parametrize("token_id", BAD_IDS, ids=repr)
def test_token_bytes_and_stream_refuse_ids_that_are_not_integers(world, token_id):
    with pytest.raises(TokenError, match=r"integers in \[0, 65536\)"):
        world.token_bytes(token_id)
    with pytest.raises(TokenError, match=r"integers in \[0, 65536\)"):
        world.stream_decoder().push(token_id)


def test_integer_ids_of_every_kind_still_decode(world):
    tok = Tokenizer.bytes()
    for ids in ([72, 105], np.array([72, 105], np.int64), np.array([72, 105], np.uint8), [np.int32(72), 105],
                (72, 105), b"Hi", iter([72, 105])):
        assert tok.decode_bytes(ids) == b"Hi", ids
    assert tok.decode([]) == "" and tok.decode(np.array([], np.int32)) == ""
    for token_id in (72, np.int64(72), np.uint16(72), np.array(72)):
        assert tok.token_bytes(token_id) == b"H"
    assert world.decode(np.array(SPEC_IDS, np.uint32)) == SPEC_TEXT
