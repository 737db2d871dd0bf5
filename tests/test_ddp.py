"""DistributedDataParallel on the CPU (gloo): two processes, each with half of the batch, give
the gradients of one process on the whole batch."""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fused_rnn


class Model(torch.nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = getattr(fused_rnn, cell)(5, 6, num_layers=2, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(12, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(1)


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 7, 5, generator=g), torch.randn(8, generator=g)


def worker(rank, world, cell, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(Model(cell))
    x, y = data()
    half = x.shape[0] // world
    xs, ys = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
    loss = (model(xs) - ys).square().mean()
    loss.backward()
    torch.save([p.grad for p in model.parameters()], os.path.join(out_dir, f"grads{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    # Leave without the interpreter's teardown: with torch 2.14.1's gloo, a worker aborts at exit
    # ("terminate called without an active exception", a std::thread still joinable) in about 1
    # of 20 runs after destroy_process_group has returned, with torch.nn.GRU in place of
    # fused_rnn as often (seen in CI and here). The gradients are on disk by now; the parent
    # checks them, and a worker that fails before this line still fails the test.
    os._exit(0)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo")
@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_ddp_two_processes_match_one_process(cell, tmp_path):
    mp.spawn(worker, args=(2, cell, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    model = Model(cell)
    x, y = data()
    (model(x) - y).square().mean().backward()
    for rank in range(2):
        grads = torch.load(tmp_path / f"grads{rank}.pt")
        for (name, p), g in zip(model.named_parameters(), grads):
            torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")
