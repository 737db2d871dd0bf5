"""Concurrency: forward and backward called from several Python threads at once, each on its own
module (every cell and option kind), give bit for bit the results of the same calls made one
after the other (on the GPU too, where there is one)."""
import threading

import pytest
import torch
from torch import nn

import fused_rnn
from helpers import DEVICES

JOBS = [("GRU", {}), ("GRU", {"reset_after": False}), ("LSTM", {}), ("LSTM", {"proj_size": 3}),
        ("RNN", {"nonlinearity": "relu"}), ("GRU", {"packed": True}), ("LSTM", {"tokens": True})]


def make_job(i, cell, kw, device):
    kw = dict(kw)
    packed, tokens = kw.pop("packed", False), kw.pop("tokens", False)
    torch.manual_seed(100 + i)
    I = 11 if tokens else 7
    m = getattr(fused_rnn, cell)(I, 16, num_layers=2, bidirectional=True, device=device, **kw)
    x = (torch.randint(0, I, (25, 6), device=device) if tokens
         else torch.randn(25, 6, I, device=device, requires_grad=True))

    def run():
        inp = x
        if packed:
            inp = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([25, 3, 17, 9, 25, 1]),
                                                    enforce_sorted=False)
        out, _ = m(inp)
        data = out.data if packed else out
        m.zero_grad()
        if x.requires_grad:
            x.grad = None
        data.square().sum().backward()
        return [data.detach().clone()] + [p.grad.clone() for p in m.parameters()] + (
            [x.grad.clone()] if x.requires_grad else [])
    return run


@pytest.mark.parametrize("device", DEVICES)
def test_threads_give_the_sequential_results(device):
    jobs = [make_job(i, cell, kw, device) for i, (cell, kw) in enumerate(JOBS)]
    sequential = [job() for job in jobs]
    rounds = 4
    results = [[None] * rounds for _ in jobs]
    errors = []
    start = threading.Barrier(len(jobs))

    def worker(k):
        try:
            start.wait()
            for r in range(rounds):
                results[k][r] = jobs[k]()
        except Exception as e:  # reported below, with the job
            errors.append((k, repr(e)))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k, (cell, kw) in enumerate(JOBS):
        for r in range(rounds):
            for a, b in zip(results[k][r], sequential[k]):
                assert torch.equal(a, b), f"{cell} {kw}: round {r} differs from the sequential run"
