"""A fuzz corpus of damaged `_moe` files: each one loads or raises OrthoHydraError naming the file, nothing else.

1,200 deterministic mutations of one valid file: header-length bytes, header JSON bytes, dtypes, shapes, data
offsets, metadata values, truncations and appended garbage.  The whole corpus runs in a few seconds.  Allocations
are bounded too: what a file loads is at most a few times its size, and loading the corpus in a fresh interpreter
does not raise its peak memory (shapes claim up to 2**40 elements).
"""

import json
import os
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from factories import adapter as make_adapter

from ortho_hydra import OrthoHydraError, load, save

UNITS = Path(__file__).resolve().parent

CORPUS = 1200
DTYPES = ["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "X99", "", 7]
METADATA_KEYS = ["oh_num_experts", "ss_network_dim", "ss_network_alpha", "oh_expert_names", "ss_router_source",
                 "ss_num_sigma_buckets", "ss_sigma_bucket_boundaries", "ss_fei_feature_dim", "ss_network_spec",
                 "oh_format_version", "ss_route_per_layer", "oh_lambda_placement"]
ODD_VALUES = ["", "-1", "0", "1e309", "nan", "abc", "[1, 2", "[]", "{}", '["a", 1]', "99999999999999999999",
              "true", "false", "null", "[0.5, 0.2]"]


def _parts(raw: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _assemble(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _mutate(raw: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(9)
    header, data = _parts(raw)
    names = [k for k in header if k != "__metadata__"]
    if kind == 0:  # header-length bytes
        b = bytearray(raw)
        b[rng.randrange(8)] = rng.randrange(256)
        return bytes(b)
    if kind == 1:  # header JSON bytes
        b = bytearray(raw)
        (n,) = struct.unpack("<Q", raw[:8])
        for _ in range(rng.randint(1, 4)):
            b[8 + rng.randrange(n)] = rng.randrange(256)
        return bytes(b)
    if kind == 2:  # dtype
        header[rng.choice(names)]["dtype"] = rng.choice(DTYPES)
    elif kind == 3:  # shape
        entry = header[rng.choice(names)]
        choice = rng.randrange(4)
        entry["shape"] = ([] if choice == 0 else [rng.randint(0, 2**40)] if choice == 1 else
                          [*entry["shape"], rng.randint(1, 9)] if choice == 2 else [-1, 3])
    elif kind == 4:  # offsets
        entry = header[rng.choice(names)]
        start, end = entry["data_offsets"]
        entry["data_offsets"] = rng.choice([[end, start], [start, end + rng.randint(1, 64)], [start, 2**62],
                                            [-8, end], ["a", end], [start], None])
    elif kind == 5:  # metadata
        meta = header.setdefault("__metadata__", {})
        meta[rng.choice(METADATA_KEYS)] = rng.choice(ODD_VALUES)
    elif kind == 6:  # truncation
        return raw[:rng.randrange(len(raw))]
    elif kind == 7:  # appended garbage, or a duplicated/renamed key
        if rng.random() < 0.5:
            return raw + bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        old = rng.choice(names)
        header[old.replace("lora", "lorra", 1) if rng.random() < 0.5 else old + ".extra"] = header.pop(old)
    else:  # data bytes (values only: NaNs and infinities)
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = 0xFF
        data = bytes(b)
    return _assemble(header, data)


def valid_file_bytes(folder: Path) -> bytes:
    path = folder / "valid_moe.safetensors"
    save(make_adapter(num_layers=2, experts=3, rank=4, names=["a", "b", "c"]), path)
    load(path)  # the seed file itself is fine
    return path.read_bytes()


def corpus(valid: bytes):
    """(index, bytes) of every mutated file, the same sequence every time."""
    rng = random.Random(1234)
    for i in range(CORPUS):
        yield i, _mutate(valid, rng)


def load_or_refusal(path: Path):
    """The adapter a file loads to, or the OrthoHydraError that refused it (anything else propagates)."""
    try:
        return load(path)
    except OrthoHydraError as err:
        return err


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory):
    return valid_file_bytes(tmp_path_factory.mktemp("fuzz"))


def _tensor_bytes(adapter) -> int:
    layers = [*adapter.layers.values(), *adapter.plain_layers.values()]
    return sum(t.numel() * t.element_size() for layer in layers for t in layer.tensors().values())


def test_every_mutated_file_loads_or_is_refused_with_a_clear_error(valid_bytes, tmp_path):
    outcomes = {"loaded": 0, "refused": 0}
    for i, data in corpus(valid_bytes):
        path = tmp_path / f"case_{i:04d}_moe.safetensors"
        path.write_bytes(data)
        result = load_or_refusal(path)
        if isinstance(result, OrthoHydraError):
            assert result.path and str(path) in result.path, (i, str(result))
            assert str(result).strip(), i
            outcomes["refused"] += 1
        else:
            # what a file loads is bounded by what it holds (fp16 files are widened to fp32 for the router: x2)
            assert _tensor_bytes(result) <= 4 * path.stat().st_size, i
            outcomes["loaded"] += 1
        path.unlink()
    assert outcomes["loaded"] + outcomes["refused"] == CORPUS
    assert outcomes["refused"] > CORPUS // 2 and outcomes["loaded"] > 0, outcomes  # the corpus does both


# A fresh interpreter's peak resident memory (the kernel's high-water mark) starts at what its imports took, so its
# growth over the corpus is the corpus's own; in the test process the mark was set long before by other tests.
PEAK_CHILD = textwrap.dedent("""
    import json, resource, sys, tempfile
    from pathlib import Path
    import torch
    from test_fuzz_moe import corpus, load_or_refusal, valid_file_bytes

    def peak_mib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    folder = Path(tempfile.mkdtemp())
    valid = valid_file_bytes(folder)
    load_or_refusal(folder / "valid_moe.safetensors")  # allocator and lazy imports warmed up
    start = peak_mib()
    for i, data in corpus(valid):
        path = folder / "case_moe.safetensors"
        path.write_bytes(data)
        load_or_refusal(path)
    after_corpus = peak_mib()
    control = torch.ones(64 * 2**20)  # 256 MiB, every page written: the instrument must see it
    print(json.dumps({"corpus_mib": after_corpus - start, "control_mib": peak_mib() - after_corpus,
                      "control_sum": float(control.sum())}))
""")


def test_loading_the_corpus_does_not_raise_peak_memory_in_a_fresh_process():
    # shapes up to 2**40 elements are in the corpus: none may be allocated before the file is refused
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(UNITS), str(UNITS.parents[1])])}
    proc = subprocess.run([sys.executable, "-c", PEAK_CHILD], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    peaks = json.loads(proc.stdout.strip().splitlines()[-1])
    assert peaks["control_sum"] == 64 * 2**20
    assert peaks["control_mib"] > 192, peaks  # 256 MiB allocated after the corpus moves the mark (minus any slack)
    assert peaks["corpus_mib"] < 64, peaks
