"""zoo.kit._infra.safetensors_reader: tensors read ourselves equal safetensors' own, and the sha256 computed on the way is the file's."""

from __future__ import annotations

import hashlib
import random

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from zoo.kit._infra.prefetch import ahead
from zoo.kit._infra.safetensors_reader import SafetensorsFile


@pytest.fixture
def weights(tmp_path):
    """A real timm model's state dict (floats, int64 counters, a bf16 copy) as one safetensors file."""
    torch.manual_seed(0)
    sd = timm.create_model("test_efficientnet", pretrained=False, num_classes=10).state_dict()
    sd["extra.bf16"] = sd["conv_stem.weight"].to(torch.bfloat16)
    sd["extra.empty"] = torch.zeros(0, 3)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("order", ["file", "reversed", "shuffled", "partial", "none"])
def test_tensors_and_sha256(weights, order):
    f = SafetensorsFile(weights)
    ref = load_file(weights)
    keys = list(f.entries)
    if order == "reversed":
        keys.reverse()
    elif order == "shuffled":
        random.Random(0).shuffle(keys)
    elif order == "partial":
        keys = keys[: len(keys) // 2]
    elif order == "none":
        keys = []
    got = {}
    for i in range(0, len(keys), 7):  # a few tensors per call, as the merge reads them
        got.update(f.read(keys[i:i + 7]))
    assert set(got) == set(keys)
    for k in keys:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape
        assert torch.equal(got[k], ref[k]), k
    assert f.sha256() == _sha(weights)
    assert f.sha256() == _sha(weights)  # asking again does not change it


def test_in_order_reads_hash_without_a_second_pass(weights):
    f = SafetensorsFile(weights)
    f.read(list(f.entries))
    assert f._digest == _sha(weights)  # complete after the one pass; sha256() has nothing left to read


def test_known_hashes_are_remembered_until_the_file_changes(weights):
    import time

    from zoo.kit._infra import hash_cache

    time.sleep(hash_cache.RACY_SECONDS + 0.1)  # a file younger than this may still be changing: not remembered
    first = SafetensorsFile(weights)
    assert first._digest is None
    first.read(list(first.entries))
    assert SafetensorsFile(weights)._digest == _sha(weights)  # remembered: no reading at all
    sd = load_file(weights)
    sd["extra.bf16"] = sd["extra.bf16"] + 1  # same size, other bytes
    save_file(sd, weights)
    again = SafetensorsFile(weights)
    assert again._digest is None
    assert again.sha256() == _sha(weights)


def test_ahead_keeps_order_and_raises_in_the_consumer():
    import time

    def task(i):
        time.sleep(0.001 * (i % 3))  # finish out of order on two workers
        return i

    tasks = (lambda i=i: task(i) for i in range(50))
    assert list(ahead(tasks, depth=4, workers=2)) == list(range(50))

    def broken():
        raise ValueError("producer failed")

    with pytest.raises(ValueError, match="producer failed"):
        list(ahead([lambda: 1, broken, lambda: 3]))
    started = []
    it = ahead((lambda i=i: started.append(i) or i for i in range(10**6)), depth=2)
    assert next(it) == 0
    it.close()  # a consumer that stops early stops submitting
    assert len(started) <= 3
