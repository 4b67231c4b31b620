"""Reading an rwkv.cpp file that is not in the page cache: the tensor table's records and the vectors are
asked of the OS ahead of their reading (rwkvx/formats/rwkvcpp.py). Only hints, so what is checked is that
the guesses are right and that they are made: every later record's page and every vector's pages are
asked for, and a corrupt header cannot make the guessing run away."""
import mmap

import pytest

import rwkvx
from rwkvx.architecture import MATRIX_TENSORS, layer_local_name
from rwkvx.formats.rwkvcpp import MAX_PREDICTED_RECORDS, RwkvCppFile, predicted_record_offsets

from conftest import tiny_model_files
from test_errors import record_offset

PAGE = mmap.PAGESIZE


def layer_of(name):
    return int(name.split(".")[1]) if name.startswith("blocks.") else None


def true_records(f):
    """Record offsets of layer 1, the first of layer 2, and those of layers 2 and up in file order."""
    records = [(layer_of(name), record_offset(info)) for name, info in f.tensors.items()]
    layer_1 = [r for layer, r in records if layer == 1]
    later = [r for layer, r in records if layer is not None and layer >= 2]
    return layer_1, later


@pytest.mark.parametrize("version, fmt, path", tiny_model_files(), ids=lambda p: getattr(p, "name", p))
def test_predictions_are_exact_for_every_tiny_model(version, fmt, path):
    f = RwkvCppFile(path)
    layer_1, later = true_records(f)
    assert predicted_record_offsets(layer_1, later[0], f.header.n_layer, f.size) == later


def synthetic_records(n_layer, tensors=(("att.key.weight", 2, 4096), ("ln1.weight", 1, 256))):
    """Record offsets of a made-up file of n_layer layers, each the same tensors (name, dims, data bytes)."""
    offsets, pos = {}, 24
    for k in range(n_layer):
        for local, dims, nbytes in tensors:
            name = f"blocks.{k}.{local}"
            offsets[name] = pos
            pos += 12 + 4 * dims + len(name) + nbytes
    return offsets, pos


@pytest.mark.parametrize("n_layer", [3, 11, 12, 101, 130])
def test_predictions_follow_the_layer_numbers_digits(n_layer):
    offsets, size = synthetic_records(n_layer)
    layer_1 = [r for name, r in offsets.items() if layer_of(name) == 1]
    later = [r for name, r in offsets.items() if layer_of(name) >= 2]
    assert predicted_record_offsets(layer_1, later[0], n_layer, size) == later


def test_a_corrupt_layer_count_stops_at_the_file_end_and_the_cap():
    offsets, size = synthetic_records(3)
    layer_1 = [r for name, r in offsets.items() if layer_of(name) == 1]
    layer_2 = offsets["blocks.2.att.key.weight"]
    guesses = predicted_record_offsets(layer_1, layer_2, 2**32 - 1, size)
    assert guesses and max(guesses) < size
    assert len(guesses) == 2  # layer 2's records: the third layer would start at the file's end
    huge = predicted_record_offsets(layer_1, layer_2, 2**32 - 1, 2**62)
    assert len(huge) == MAX_PREDICTED_RECORDS


@pytest.fixture
def advised(monkeypatch):
    """Every (advice, begin, length) given to madvise through RwkvCppFile, in order."""
    calls = []
    original = RwkvCppFile._advise

    def recording(self, advice, begin=0, length=0):
        calls.append((advice, begin, length))
        original(self, advice, begin, length)

    monkeypatch.setattr(RwkvCppFile, "_advise", recording)
    return calls


def pages_asked(calls):
    return {p for advice, begin, length in calls if advice == mmap.MADV_WILLNEED
            for p in range(begin // PAGE, -(-(begin + length) // PAGE))}


@pytest.mark.parametrize("path", [p for v, fmt, p in tiny_model_files() if fmt in ("FP32", "Q5_1")],
                         ids=lambda p: p.name)
def test_loading_asks_for_later_records_and_every_vector(path, advised):
    model = rwkvx.load(path, pack=False)
    f = model.source
    _, later = true_records(f)
    asked = pages_asked(advised)
    assert all(r // PAGE in asked and (r + 64) // PAGE in asked for r in later)  # a record's head: 64 bytes
    vectors = [info for name, info in f.tensors.items() if layer_local_name(name) not in MATRIX_TENSORS]
    assert vectors
    for info in vectors:
        assert set(range(info.offset // PAGE, -(-(info.offset + info.nbytes) // PAGE))) <= asked, info.name


def test_a_file_without_layer_2_is_read_without_guesses(tmp_path, advised):
    """Layer 1's records are only collected for a guess once layer 2 begins: no layer 2, no guesses."""
    f = RwkvCppFile(next(p for v, fmt, p in tiny_model_files() if v == "4v0-660K"))
    assert f.header.n_layer > 2 and pages_asked(advised)  # the tiny model does guess
    advised.clear()
    cut = record_offset(next(info for name, info in f.tensors.items() if layer_of(name) == 2))
    short = tmp_path / "two-layers.bin"
    short.write_bytes(open(f.path, "rb").read()[:cut])
    assert set(RwkvCppFile(short).tensors) < set(f.tensors)
    assert not pages_asked(advised)


def test_advice_the_os_refuses_is_ignored():
    """madvise is only ever a hint: a file system that refuses it must not make loading fail."""
    class Refusing:
        def madvise(self, *args):
            raise OSError(22, "Invalid argument")

    f = RwkvCppFile(next(p for v, fmt, p in tiny_model_files() if fmt == "FP32"))
    f._mmap = Refusing()  # prefetch and release only ever advise through it
    name = next(iter(f.tensors))
    f.prefetch(name)
    f.release(name)
    f._prefetch_pages([0, 4096])
