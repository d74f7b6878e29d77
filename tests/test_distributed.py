"""Data-parallel training: shards of the windows, identical weights on every rank, one writer."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DistributedSampler

from ctxq_cli.distributed import Group, WindowSampler, shard, split_batch
from ctxq_cli.errors import CtxqError
from ctxq_cli.model import DenoiserModel

from conftest import smooth_field


def test_each_epoch_is_split_into_disjoint_shards_that_cover_it():
    count, world = 37, 3
    samplers = [WindowSampler(count, batch=4, seed=5, group=Group(rank=r, world=world))
                for r in range(world)]
    per_rank = -(-count // world)            # the largest shard
    steps = per_rank // 4
    drawn = [torch.cat([s.next() for _ in range(steps)]).tolist() for s in samplers]
    flat = [i for shard in drawn for i in shard]
    assert len(set(flat)) == len(flat)       # no window twice within the epoch's first batches
    assert all(0 <= i < count for i in flat)
    # a whole epoch per rank covers every window
    full = [WindowSampler(count, batch=per_rank, seed=5, group=Group(rank=r, world=world)).next()
            for r in range(world)]
    assert set(torch.cat(full).tolist()) == set(range(count))


def test_each_process_draws_a_contiguous_stretch_and_one_process_all_in_the_usual_order():
    count, world = 50, 4
    for rank in range(world):
        s = WindowSampler(count, batch=5, seed=3, group=Group(rank=rank, world=world))
        drawn = torch.cat([s.next() for _ in range(6)]).tolist()
        stretch = shard(count, Group(rank=rank, world=world))
        assert set(drawn) <= set(stretch) and len(stretch) in (12, 13)
    alone = WindowSampler(count, batch=count, seed=3).next().tolist()
    usual = DistributedSampler(range(count), num_replicas=1, rank=0, shuffle=True, seed=3)
    assert alone == list(usual)         # one process trains exactly as before the shards


def test_every_rank_resumes_from_the_main_rank_state_whatever_its_shard_length():
    # 7 windows over 3 ranks: shards of 2, 2 and 3 roll over epochs at different steps
    ranks = [WindowSampler(7, batch=2, seed=0, group=Group(rank=r, world=3)) for r in range(3)]
    for _ in range(4):
        for s in ranks:
            s.next()
    saved = ranks[0].state_dict()            # only the main rank's state is written
    for r, s in enumerate(ranks):
        again = WindowSampler(7, batch=2, seed=0, group=Group(rank=r, world=3))
        again.load_state_dict(saved)
        assert [again.next().tolist() for _ in range(5)] == [s.next().tolist() for _ in range(5)]


def test_fewer_windows_than_processes_is_one_line_not_a_hang():
    with pytest.raises(CtxqError, match="2 training windows cannot be shared by 3 processes"):
        WindowSampler(2, batch=2, seed=0, group=Group(rank=0, world=3))


def test_the_sampler_goes_on_from_a_saved_position_and_reshuffles_epochs():
    a = WindowSampler(10, batch=4, seed=1)
    first = [a.next().tolist() for _ in range(2)]
    saved = a.state_dict()
    rest = [a.next().tolist() for _ in range(3)]
    b = WindowSampler(10, batch=4, seed=1)
    b.load_state_dict(saved)
    assert [b.next().tolist() for _ in range(3)] == rest
    drawn = sum(first + rest, [])
    epoch0, epoch1 = drawn[:10], drawn[10:20]
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1                   # the next epoch comes in another order


def test_the_global_batch_must_split_evenly():
    assert split_batch(8, Group(rank=0, world=4)) == 2
    with pytest.raises(CtxqError, match="--batch-size 6 does not split evenly over 4"):
        split_batch(6, Group(rank=1, world=4))


WORKER = """
import sys
import numpy as np
import torch
from safetensors.torch import save_file
from ctxq_cli import distributed
from ctxq_cli.frames import CachedFrames, InMemory
from ctxq_cli.loop import RunControl
from ctxq_cli.train import TrainOptions, train_denoiser

data = np.load(sys.argv[1])
group, device = distributed.start(torch.device("cpu"))
options = TrainOptions(steps=6, channels=(8, 16), batch_size=4, window=3, val_every=3,
                       partition="pixel", val_fraction=0)   # keep the last, trained weights
# frames read on demand through a cache that holds a part of them, the smoother's states of
# each process's stretch in scratch files
frames = CachedFrames(InMemory(data["values"], data["observed"]), budget=2e4)
model = train_denoiser(frames, data["domain"], ["u"], options, device, progress=False,
                       control=RunControl(group=group), memory=0)
save_file({k: v.contiguous() for k, v in model.denoiser.state_dict().items()},
          f"{sys.argv[2]}/rank{group.rank}.safetensors")
distributed.finish(group)
"""


def _torchrun(*args, cwd):
    """Run two CPU processes under torchrun; return the completed process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": ":".join(sys.path)})


def _field(tmp_path):
    values = smooth_field(30, 16, 16, seed=3)[:, None]
    observed = np.random.default_rng(3).random(values.shape) < 0.6
    return np.where(observed, values, 0).astype(np.float32), observed


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    values, observed = _field(tmp_path)
    np.savez(tmp_path / "data.npz", values=values, observed=observed,
             domain=np.ones((16, 16), bool))
    (tmp_path / "worker.py").write_text(WORKER)
    run = _torchrun("worker.py", str(tmp_path / "data.npz"), str(tmp_path), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-6000:]
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    # and training did move them: the last layer starts at zero
    assert any(t.abs().sum() > 0 for n, t in ranks[0].items() if "conv2.weight" in n)


@pytest.mark.slow
def test_torchrun_train_denoiser_writes_once_and_logs_once(tmp_path):
    values, observed = _field(tmp_path)
    np.savez(tmp_path / "obs.npz", u=np.where(observed, values, np.nan))
    out = tmp_path / "d.safetensors"
    run = _torchrun("-m", "ctxq_cli", "train-denoiser", "obs.npz", "-o", str(out),
                    "--steps", "5", "--channels", "8,16", "--batch-size", "4",
                    "--checkpoint-every", "2", "--device", "cpu", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-6000:]
    records = [json.loads(line) for line in out.with_suffix(".log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert "batch size 4 (2 per process × 2 processes)" in run.stderr
    assert run.stderr.count("wrote ") == 1
    assert not (tmp_path / "d.resume.safetensors").exists()
    assert DenoiserModel.load(out).training["processes"] == 2


@pytest.mark.slow
def test_torchrun_train_mask_prior(tmp_path):
    values, observed = _field(tmp_path)
    np.savez(tmp_path / "obs.npz", u=np.where(observed, values, np.nan))
    out = tmp_path / "prior.safetensors"
    run = _torchrun("-m", "ctxq_cli", "train-mask-prior", "obs.npz", "-o", str(out),
                    "--steps", "3", "--channels", "8,16", "--batch-size", "4", "--device", "cpu",
                    cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-6000:]
    assert out.exists() and run.stderr.count("wrote ") == 1


@pytest.mark.slow
def test_sigterm_to_torchrun_leaves_a_state_that_two_processes_resume(tmp_path):
    values, observed = _field(tmp_path)
    np.savez(tmp_path / "obs.npz", u=np.where(observed, values, np.nan))
    out, log = tmp_path / "d.safetensors", tmp_path / "d.log.jsonl"
    args = ["-m", "ctxq_cli", "train-denoiser", "obs.npz", "-o", str(out), "--channels", "8,16",
            "--batch-size", "4", "--device", "cpu", "--resume"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", *args, "--steps", "100000"]
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600   # a guard against hangs, not a budget
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)          # what SLURM sends at the time limit
    _, stderr = proc.communicate(timeout=600)
    assert (tmp_path / "d.resume.safetensors").exists(), stderr[-2000:]
    assert not out.exists()
    stopped = len(log.read_text().splitlines())
    run = _torchrun(*args, "--steps", str(stopped + 3), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-6000:]
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == list(range(1, stopped + 4))
    assert out.exists() and not (tmp_path / "d.resume.safetensors").exists()
