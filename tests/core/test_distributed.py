"""Data-parallel training under torchrun (issue 15): two gloo processes on the CPU reach the
accuracy of one process, rank 0 alone writes the bundle, and commands that run in one process
say so under a launcher."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest

from cellannot_core.pipeline import predict_with_bundle
from conftest import demo_subset

LABEL = "cell_type_harmonized"


def _train(args: list[str], tmp_path, out: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, CELLANNOT_NUM_THREADS="1", **(env_extra or {}))
    cmd = [*args, "-m", "cellannot_core", "train", "--reference", str(tmp_path / "ref.h5ad"), "--query",
           str(tmp_path / "q.h5ad"), "--label-key", LABEL, "--model", "scanvi", "--max-epochs", "20", "--device",
           "cpu", "--save-model", str(tmp_path / out)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _accuracy(model_dir, q: ad.AnnData) -> float:
    a = predict_with_bundle(model_dir, q, device="cpu")
    lab = q.obs[LABEL].astype(str).to_numpy()
    known = np.isin(lab, list(a.uns["cellannot"]["classes"]))
    return float(np.mean(a.obs["cellannot_label_raw"].astype(str).to_numpy()[known] == lab[known]))


def test_two_gloo_processes_reach_the_single_process_accuracy(tmp_path):
    ref, q = demo_subset(800, 600, seed=1)
    ref.write_h5ad(tmp_path / "ref.h5ad")
    q.write_h5ad(tmp_path / "q.h5ad")
    one = _train([sys.executable], tmp_path, "single")
    assert one.returncode == 0, one.stderr[-2000:]
    two = _train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                 tmp_path, "ddp")
    assert two.returncode == 0, two.stderr[-2000:]
    out = two.stdout + two.stderr
    assert out.count("saved model to") == 1  # rank 0 alone writes and logs
    cfg_one = json.loads((tmp_path / "single" / "config.json").read_text())
    cfg_two = json.loads((tmp_path / "ddp" / "config.json").read_text())
    # the same steps per epoch (the batch size is the global one), half the cells per process per step
    assert len(cfg_two["history"]["epochs"]) == len(cfg_one["history"]["epochs"]) == 20
    val_one = cfg_one["history"]["epochs"][-1]["val_acc"]
    val_two = cfg_two["history"]["epochs"][-1]["val_acc"]
    # 120 validation cells: within three of them (two shards draw other mini-batches, so this is
    # another run; seen on a fresh machine: 106 against 108 cells)
    assert val_two >= val_one - 3 / 120 - 1e-6
    assert _accuracy(tmp_path / "ddp", q) >= _accuracy(tmp_path / "single", q) - 0.01


def test_one_process_commands_refuse_under_a_launcher(tmp_path):
    env = dict(os.environ, WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")
    r = subprocess.run([sys.executable, "-m", "cellannot_core", "predict", "--model", str(tmp_path), "--query",
                        str(tmp_path / "q.h5ad"), "--out", str(tmp_path / "o.h5ad")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2
    assert "runs in one process" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("n,size", [(10, 2), (11, 2), (7, 3)])
def test_shards_are_disjoint_and_equal(n, size, monkeypatch):
    import torch

    from cellannot_core.training import distributed

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    shards = []
    for rank in range(size):
        monkeypatch.setattr(distributed, "world", lambda rank=rank: (rank, size))
        shards.append(distributed.shard(perm))
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == n // size
    joined = torch.cat(shards)
    assert len(set(joined.tolist())) == len(joined)
