"""Many-to-one bidirectional LSTM classifier on a generated sequence task.

Task: a sequence of random digits 0-9 (length 12-20); the label is 1 when the first digit of
the sequence is larger than the last one. Neither direction alone sees both ends in its final
state: the forward direction's last step has seen the whole sequence but must carry the first
digit across it; the backward direction's last step (at position 0) has just read the first
digit and carries the last one. The classifier concatenates the last-step features of both
directions (forward at t = T-1, backward at t = 0) into a linear layer.

    python examples/birnn_classifier.py               # fused BiLSTM, reaches >= 95% accuracy
    python examples/birnn_classifier.py --impl torch  # the same with nn.LSTM
"""
import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fused_rnn  # noqa: E402

VOCAB = 10


def make_batch(batch_size, generator, min_len=12, max_len=20):
    """ids: [B, T] padded with 0, lengths: [B], labels: [B] (first digit > last digit)."""
    lengths = torch.randint(min_len, max_len + 1, (batch_size,), generator=generator)
    ids = torch.randint(0, VOCAB, (batch_size, max_len), generator=generator)
    ids = ids * (torch.arange(max_len) < lengths[:, None])
    last = ids.gather(1, (lengths - 1)[:, None]).squeeze(1)
    labels = (ids[:, 0] > last).long()
    return ids, lengths, labels


class BiLSTMClassifier(nn.Module):
    def __init__(self, impl, hidden=64):
        super().__init__()
        self.impl = impl
        cls = fused_rnn.LSTM if impl == "fused" else nn.LSTM
        self.rnn = cls(VOCAB, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, 2)

    def forward(self, ids, lengths):
        """ids: [B, T], lengths: [B] -> logits: [B, 2]."""
        packed = nn.utils.rnn.pack_padded_sequence(
            ids if self.impl == "fused" else F.one_hot(ids, VOCAB).float(), lengths,
            batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.rnn(packed)  # h_n: [2, B, H]: forward's last step, backward's first
        return self.out(torch.cat([h_n[0], h_n[1]], dim=1))


def run(impl="fused", steps=400, batch_size=64, lr=1e-2, seed=0, log=print):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = BiLSTMClassifier(impl)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        ids, lengths, labels = make_batch(batch_size, gen)
        loss = F.cross_entropy(model(ids, lengths), labels)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0:
            log(f"[{impl}] step {step}, loss {sum(losses[-100:]) / 100:.4f}")
    test_gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        ids, lengths, labels = make_batch(2000, test_gen)
        accuracy = (model(ids, lengths).argmax(1) == labels).float().mean().item()
    log(f"[{impl}] test accuracy {accuracy:.3f} on 2000 new sequences, "
        f"{time.perf_counter() - start:.1f} s")
    return losses, accuracy


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", default="fused", choices=["fused", "torch"])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    run(args.impl, args.steps, seed=args.seed)


if __name__ == "__main__":
    main()
