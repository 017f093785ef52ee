"""Data-parallel training with two CPU processes (gloo): ch05/train.py under torchrun, and
DistributedDataParallel steps that equal one process training on the whole global batch."""

from __future__ import annotations

import contextlib
import io
import math
import multiprocessing
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from shared.corpus import TokenWindowDataset
from shared.data import fetch
from shared.distributed import get_world_size, is_main_process, setup_distributed
from shared.pretraining import calc_loss_batch, read_checkpoint_extra
from shared.speed import TrainingOptions, train_model, train_step
from shared.tokenizers import gpt2_tokenizer
from tests.conftest import TINY, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "ch05" / "train.py"
TIMEOUT = 240  # seconds; a hung process group fails the test instead of blocking it

# The DDP-equivalence run: 3 optimizer steps, each on a global batch of 8 windows; every rank
# holds 4 of them and accumulates them as 2 micro-batches of 2; gradients are clipped.
STEPS = 3
OPTIONS = TrainingOptions(grad_accumulation_steps=2, max_grad_norm=0.5)


def global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """8 fixed windows of 12 tokens: inputs and targets, each (8, 12)."""
    ids = torch.randint(0, TINY["vocab_size"], (8, 13), generator=torch.Generator().manual_seed(3))
    return ids[:, :-1], ids[:, 1:]


def new_model_and_optimizer():
    model = tiny_model(seed=11)  # dropout 0: every rank computes what one process would
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


class RecordingSampler(DistributedSampler):
    """A DistributedSampler that remembers the epochs it was set to."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.epochs = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)
        super().set_epoch(epoch)


def ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """One rank: DDP train_step on its half of the global batch, then train_model."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        assert (get_world_size(), is_main_process()) == (world_size, rank == 0)
        model, optimizer = new_model_and_optimizer()
        ddp_model = DistributedDataParallel(model)
        inputs, targets = global_batch()
        share = slice(rank * 4, rank * 4 + 4)
        mine = [(inputs[share][:2], targets[share][:2]), (inputs[share][2:], targets[share][2:])]
        losses = [
            train_step(ddp_model, mine, optimizer, "cpu", OPTIONS, loss_fn=calc_loss_batch).item()
            for _ in range(STEPS)
        ]
        after_steps = {k: v.clone() for k, v in model.state_dict().items()}

        # train_model under DDP: set_epoch every epoch, only rank 0 prints.
        sampler = RecordingSampler(TensorDataset(inputs, targets), shuffle=True, seed=5)
        loader = DataLoader(TensorDataset(inputs, targets), batch_size=2, sampler=sampler)
        output = io.StringIO()
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            _, _, tokens_seen = train_model(
                ddp_model, loader, loader, optimizer, "cpu", 2, 1, 1, "I", gpt2_tokenizer()
            )
        torch.save(
            {
                "losses": losses,
                "after_steps": after_steps,
                "final": model.state_dict(),
                "epochs": sampler.epochs,
                "tokens_seen": tokens_seen,
                "output": output.getvalue(),
            },
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(world_size: int, out_dir: Path) -> list[dict]:
    """Run ddp_worker in world_size spawned processes; return what each rank saved."""
    context = multiprocessing.get_context("spawn")
    port = free_port()
    processes = [
        context.Process(target=ddp_worker, args=(rank, world_size, port, str(out_dir)))
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join(TIMEOUT)
        hung = [rank for rank, p in enumerate(processes) if p.is_alive()]
        assert not hung, f"ranks {hung} still running after {TIMEOUT} s"
        failed = {rank: p.exitcode for rank, p in enumerate(processes) if p.exitcode != 0}
        assert not failed, f"ranks failed with exit codes {failed} (see the captured stderr)"
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
    return [torch.load(out_dir / f"rank{rank}.pt", weights_only=True) for rank in range(world_size)]


def test_ddp_equals_one_process_on_the_global_batch(tmp_path):
    ranks = run_ranks(2, tmp_path)

    # Reference: one process, the whole global batch of 8 windows in one micro-batch.
    model, optimizer = new_model_and_optimizer()
    inputs, targets = global_batch()
    reference = TrainingOptions(max_grad_norm=OPTIONS.max_grad_norm)
    losses = [
        train_step(
            model, [(inputs, targets)], optimizer, "cpu", reference, loss_fn=calc_loss_batch
        ).item()
        for _ in range(STEPS)
    ]

    # Each rank's loss is the mean over its half; the global loss is the mean of the two.
    global_losses = [(a + b) / 2 for a, b in zip(ranks[0]["losses"], ranks[1]["losses"])]
    assert global_losses == pytest.approx(losses, rel=1e-5, abs=1e-6)
    assert ranks[0]["losses"] != ranks[1]["losses"]  # the halves really differ
    assert losses[-1] < losses[0] - 0.5  # and the steps really trained
    for name, weight in model.state_dict().items():
        assert torch.equal(ranks[0]["after_steps"][name], ranks[1]["after_steps"][name]), name
        torch.testing.assert_close(ranks[0]["after_steps"][name], weight, atol=1e-5, rtol=1e-4)

    # train_model under DDP: same weights everywhere, set_epoch, output on rank 0 only.
    for name, weight in ranks[0]["final"].items():
        assert torch.equal(weight, ranks[1]["final"][name]), name
    assert not torch.equal(
        ranks[0]["final"]["out_head.weight"], ranks[0]["after_steps"]["out_head.weight"]
    )
    assert ranks[0]["epochs"] == ranks[1]["epochs"] == [0, 1]
    assert ranks[0]["tokens_seen"] == ranks[1]["tokens_seen"]
    assert ranks[0]["tokens_seen"][-1] == 2 * 8 * 12  # two epochs of 8 windows, both ranks
    assert "Ep 2 (Step 000003): Train loss" in ranks[0]["output"]
    assert "Training" in ranks[0]["output"]  # the progress bar
    assert ranks[1]["output"] == ""


def test_setup_distributed_without_torchrun(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert setup_distributed("cpu") == (0, 0, 1, torch.device("cpu"))
    assert not dist.is_initialized() and is_main_process() and get_world_size() == 1


def test_setup_distributed_refuses_mps_under_torchrun(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="cannot train data-parallel"):
        setup_distributed("mps")
    assert not dist.is_initialized()


def torchrun(log_dir: Path, *args) -> subprocess.CompletedProcess:
    """ch05/train.py in 2 CPU processes; each rank's output also lands in log_dir."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", f"--log-dir={log_dir}", "--tee=3", str(TRAIN)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [*command, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def rank_stdout(log_dir: Path, rank: int) -> str:
    (path,) = log_dir.glob(f"**/attempt_0/{rank}/stdout.log")
    return path.read_text()


def test_train_script_under_torchrun_trains_resumes_and_logs_on_rank_0(tmp_path):
    corpus = tmp_path / "verdict-part.txt"
    corpus.write_text(fetch("the-verdict").read_text(encoding="utf-8")[:5000], encoding="utf-8")
    run_dir, tokens = tmp_path / "run", tmp_path / "tokens.bin"
    common = ["--size", "tiny", "--context-length", "16", "--batch-size", "2", "--lr", "3e-3"]
    common += ["--eval-freq", "8", "--dropout", "0", "--device", "cpu"]
    common += ["--checkpoint-dir", run_dir]

    # Epoch 1: tokenise the text into a token file (once per machine), then stream from it.
    torchrun(tmp_path / "logs1", "--data", corpus, "--token-file", tokens, *common, "--epochs", 1)
    out0, out1 = rank_stdout(tmp_path / "logs1", 0), rank_stdout(tmp_path / "logs1", 1)
    assert out1 == ""  # rank 1 trains silently
    assert out0.count("Tokenised 1 file(s)") == 1 and "2 processes" in out0
    assert "Ep 1 (Step 000000)" in out0 and out0.count("Final train loss") == 1
    assert sorted(p.name for p in run_dir.iterdir()) == ["last.pth", "losses.png"]
    first = read_checkpoint_extra(run_dir / "last.pth")
    steps = first["global_step"]
    training_windows = int(0.9 * len(TokenWindowDataset(tokens, 16, stride=16)))
    assert first["epoch"] == 1 and steps == training_windows // 2 // 2  # per process, batch 2
    assert first["tokens_seen"] == steps * 2 * 2 * 16  # both processes' tokens

    # Epoch 2: resume from the token file alone, with accumulation, clipping and bf16.
    speed = ["--grad-accumulation-steps", "2", "--max-grad-norm", "1.0", "--bf16"]
    args = ["--token-file", tokens, *common, *speed, "--epochs", 2, "--resume"]
    torchrun(tmp_path / "logs2", *args)
    out0, out1 = rank_stdout(tmp_path / "logs2", 0), rank_stdout(tmp_path / "logs2", 1)
    assert out1 == "" and out0.count("Resuming from") == 1 and "after epoch 1" in out0
    second = read_checkpoint_extra(run_dir / "last.pth")
    assert second["epoch"] == 2 and second["global_step"] == steps + math.ceil(steps / 2)
    assert second["train_losses"][: len(first["train_losses"])] == first["train_losses"]
    assert second["train_losses"][-1] < first["train_losses"][0] - 1.0
