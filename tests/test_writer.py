"""The streaming writer (zoo.kit._infra.safetensors_writer): outputs written tensor by tensor into files laid out in advance,
byte-identical to huggingface_hub.save_torch_state_dict; and the bad input around it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import save_torch_state_dict
from safetensors.torch import load_file

import zoo
from zoo.kit._infra.safetensors_reader import dtype_name
from zoo.kit.tensors.stream import write_results_into
from zoo.kit._infra.safetensors_writer import Layout, Spec, StoredState, StreamWriter


def _mixed_state_dict() -> dict[str, torch.Tensor]:
    """Every dtype a timm checkpoint holds, names out of order, a scalar and an empty tensor."""
    g = torch.Generator().manual_seed(0)
    kinds = [((3, 5), torch.float32), ((7,), torch.bfloat16), ((), torch.int64), ((2, 2, 3), torch.float16),
             ((0, 4), torch.float32), ((11,), torch.float64), ((4,), torch.uint8), ((5,), torch.bool),
             ((300,), torch.float32), ((9, 2), torch.bfloat16)]
    return {f"blocks.{9 - i}.w{i}": (torch.randn(shape, generator=g) * 10).to(dt) for i, (shape, dt) in enumerate(kinds)}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("max_shard_size", ["20GB", 400, "1KB"])
def test_streamed_files_are_the_bytes_save_torch_state_dict_writes(tmp_path, max_shard_size):
    sd = _mixed_state_dict()
    (tmp_path / "hub").mkdir()
    save_torch_state_dict(sd, tmp_path / "hub", max_shard_size=max_shard_size, metadata={"format": "pt"})
    layout = Layout.plan([Spec(k, tuple(v.shape), dtype_name(v)) for k, v in sd.items()],
                         max_shard_size=max_shard_size)
    writer = StreamWriter(tmp_path / "stage", layout)
    for k in reversed(list(sd)):  # finished in another order than the file's
        writer.put(k, sd[k])
    stored = writer.finish(list(sd))
    assert list(stored) == list(sd) and all(torch.equal(stored[k], sd[k]) for k in sd)
    (tmp_path / "out").mkdir()
    assert stored.adopt(tmp_path / "out", max_shard_size=max_shard_size)
    expected = _files(tmp_path / "hub")
    assert (len(expected) > 1) == (max_shard_size != "20GB")  # the sharded cases really shard
    assert _files(tmp_path / "out") == expected


def test_unfinished_output_is_refused_and_removed(tmp_path):
    sd = _mixed_state_dict()
    layout = Layout.plan([Spec(k, tuple(v.shape), dtype_name(v)) for k, v in sd.items()], max_shard_size="20GB")
    writer = StreamWriter(tmp_path, layout)
    assert (tmp_path / "model.safetensors").stat().st_size == layout.size  # reserved in full up front
    writer.put("blocks.9.w0", sd["blocks.9.w0"])
    with pytest.raises(zoo.ZooError, match="never written"):
        writer.finish()
    assert not any(tmp_path.iterdir())
    writer = StreamWriter(tmp_path, layout)
    with pytest.raises(zoo.ZooError, match="planned"):
        writer.put("blocks.9.w0", sd["blocks.9.w0"].double())


def test_map_tensors_inside_output_to_writes_as_it_goes(tmp_path, ingredients):
    members = [zoo.load_member(str(p)) for p in ingredients[:3]]
    in_memory = zoo.kit.tensors.weights.uniform_average(members)
    with write_results_into(tmp_path / "stage", max_shard_size="20GB"):
        streamed = zoo.kit.tensors.weights.uniform_average(members)
    assert isinstance(streamed, StoredState) and isinstance(in_memory, dict)
    assert list(streamed) == list(in_memory)
    assert all(torch.equal(streamed[k], in_memory[k]) for k in in_memory)
    files = list((tmp_path / "stage").rglob("*.safetensors"))
    assert len(files) == 1
    del streamed  # a result nobody adopted takes its files with it
    assert not files[0].exists()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("shard", ["20GB", "100KB"])
def test_combine_with_out_writes_the_bytes_saving_from_memory_writes(tmp_path, ingredients, zoo_cli, shard):
    """The CLI's soup is streamed into its files (tests/test_memory_bound.py shows it is never in memory);
    saving the same soup from memory gives the same files."""
    specs = [str(p) for p in ingredients[:3]]
    zoo_cli("combine", "-s", "soup", *sum((["-m", s] for s in specs), []), "--max-shard-size", shard,
            "--out", tmp_path / "streamed")
    result = zoo.combine("soup", specs)  # no out: held in memory
    assert isinstance(result.state_dict, dict)
    zoo.api.combine.save(result, tmp_path / "memory", max_shard_size=shard)
    weights = [n for n in os.listdir(tmp_path / "memory") if n.startswith("model")]
    assert weights and (len(weights) > 1) == (shard != "20GB")
    for name in weights:
        assert _sha(tmp_path / "streamed" / name) == _sha(tmp_path / "memory" / name), name
    assert not list(tmp_path.glob(".streamed.stage-*"))  # the staging folder is gone


def test_a_changed_streamed_result_is_written_from_its_tensors(tmp_path, ingredients):
    members = [zoo.load_member(str(p)) for p in ingredients[:2]]
    with write_results_into(tmp_path / "stage", max_shard_size="20GB"):
        sd = zoo.kit.tensors.weights.uniform_average(members)
    key = next(k for k in sd if k.endswith("weight"))
    sd[key] = sd[key] * 2
    assert not sd.adopt(tmp_path, max_shard_size="20GB") and not (tmp_path / "model.safetensors").exists()
    result = zoo.Combined(state_dict=sd, config=dict(members[0].config))
    result.members, result.strategy, result.options = [], "soup", {}
    zoo.api.combine.save(result, tmp_path / "out")
    written = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert torch.equal(written[key], sd[key]) and set(written) == set(sd)


# ---- bad input -----------------------------------------------------------------------------------

def test_not_enough_disk_is_refused_before_merging(tmp_path, ingredients, monkeypatch):
    """A disk with less free space than the output: refused when the output is laid out, naming the size
    needed, with nothing written. (The free space is what shutil.disk_usage reports; the test lowers it.)"""
    real = shutil.disk_usage
    monkeypatch.setattr("zoo.kit._infra.safetensors_writer.shutil.disk_usage",
                        lambda p: real(p)._replace(free=1000))
    need = sum(Path(p, "model.safetensors").stat().st_size for p in ingredients[:1])
    out = tmp_path / "soup"
    with pytest.raises(zoo.BadInput, match="not enough disk space for the output: it needs") as err:
        zoo.combine("soup", [str(p) for p in ingredients[:2]], out=out)
    assert f"{need / 2**20:.1f} MiB" in str(err.value)
    assert any(entry.name == "_reserve" for entry in err.traceback)  # when the output was laid out
    assert f"on the disk of {tmp_path.resolve()};" in str(err.value)  # the folder chosen, not zoo's staging
    assert not out.exists() and not list(tmp_path.glob(".soup*"))


def test_shard_index_naming_a_missing_shard(tmp_path, ingredients, zoo_cli):
    sharded = tmp_path / "sharded"
    zoo_cli("combine", "-s", "soup", "-m", ingredients[0], "-m", ingredients[1], "--max-shard-size", "100KB",
            "--out", sharded)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    lost = sorted(set(index["weight_map"].values()))[1]
    (sharded / lost).unlink()
    out = tmp_path / "soup"
    proc = zoo_cli("combine", "-s", "soup", "-m", sharded, "-m", ingredients[2], "--out", out, check=False)
    assert proc.returncode == 2
    assert "shards listed in model.safetensors.index.json are missing" in proc.stderr and lost in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("where", ["../other/{}", "/{}"])
def test_shard_index_naming_a_shard_outside_the_members_folder(tmp_path, ingredients, zoo_cli, where):
    """An index may name any path; zoo reads only the shards inside the member's own folder."""
    sharded, other = tmp_path / "sharded", tmp_path / "other"
    zoo_cli("combine", "-s", "soup", "-m", ingredients[0], "-m", ingredients[1], "--max-shard-size", "100KB",
            "--out", sharded)
    index_path = sharded / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    moved = sorted(set(index["weight_map"].values()))[1]
    other.mkdir()
    shutil.move(sharded / moved, other / moved)
    named = where.format(other / moved if where.startswith("/") else moved).replace("//", "/")
    index["weight_map"] = {k: named if v == moved else v for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    out = tmp_path / "soup"
    proc = zoo_cli("combine", "-s", "soup", "-m", sharded, "-m", ingredients[2], "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "names a shard outside the member's folder" in proc.stderr and named in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".soup*"))


def test_member_whose_header_promises_more_bytes_than_the_file_holds(tmp_path, ingredients, zoo_cli):
    """A download cut short: the header names tensors past the end of the file."""
    cut = tmp_path / "cut"
    shutil.copytree(ingredients[0], cut)
    weights = cut / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 4096)
    out = tmp_path / "soup"
    proc = zoo_cli("combine", "-s", "soup", "-m", cut, "-m", ingredients[1], "--out", out, check=False)
    assert proc.returncode == 2 and "truncated or corrupt" in proc.stderr and "member cut" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize("size", ["junk", "12", "0", "-5MB", "0MB"])
def test_a_shard_size_that_is_not_a_size_is_refused_before_any_work(tmp_path, ingredients, zoo_cli, size):
    out = tmp_path / "out"
    proc = zoo_cli("combine", "-s", "soup", "-m", ingredients[0], "-m", ingredients[1], "--max-shard-size", size,
                   "--out", out, check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"--max-shard-size {size}" in proc.stderr and "5GB" in proc.stderr
    assert "Traceback" not in proc.stderr and "not supported" not in proc.stderr  # zoo's words, not the parser's
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing staged


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # ended and reaped: its id names no process now
    return proc.pid


def test_a_run_removes_what_killed_runs_left_beside_its_out(tmp_path, ingredients, zoo_cli):
    """A run killed during its merge leaves its staging folder (a full-size file in it); the next run to the
    same --out removes it, and leaves alone the folders of a process that still runs and of other outputs."""
    out, dead, alive = tmp_path / "soup", _dead_pid(), os.getpid()
    left = {name: tmp_path / name for name in (f".soup.stage-{dead}", f".soup.tmp-{dead}-k2x9", f".soup.old-{dead}",
                                               f".soup.stage-{alive}", f".other.stage-{dead}", ".soup.distill")}
    for folder in left.values():
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\0" * 4096)
    zoo_cli("combine", "-s", "soup", "-m", ingredients[0], "-m", ingredients[1], "--out", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["soup", f".soup.stage-{alive}", f".other.stage-{dead}", ".soup.distill"])
