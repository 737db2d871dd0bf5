"""Character-level language model, the gated-RNN lesson's workflow, on fused_rnn layers.

Corpus -> vocabulary and indices -> minibatches of 35 steps (random or consecutive sampling) ->
an RNN layer (GRU, LSTM or RNN; hidden 256) and a linear decoder -> cross-entropy with gradient
clipping -> perplexity every epoch and text generated from prefixes every few epochs.

    python examples/char_lm.py                         # fused GRU on the built-in corpus
    python examples/char_lm.py --compare --epochs 3    # fused vs nn.GRU, same seed, side by side
    python examples/char_lm.py --corpus lyrics.txt.zip --epochs 40 --prefixes 分开 不分开
    python examples/char_lm.py --impl reference        # the textbook cells (slow, for checking)

--impl fused feeds token ids straight into the layer (integer input: the layer's input weights
are gathered, no one-hot tensor is built); torch and reference get one-hot vectors, as in the
lesson.

Why a bidirectional layer cannot be a left-to-right language model: its backward direction
reads the sequence from the end, so the state used to predict character t+1 already contains
character t+1 itself. Training then "predicts" by copying, and perplexity collapses towards 1,
but generation, which has no future to read, has learned nothing useful and degenerates into
repetition. --bidirectional is offered to show exactly that.
"""
import argparse
import io
import math
import os
import random
import sys
import time
import zipfile

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import fused_rnn  # noqa: E402
from fused_rnn import reference  # noqa: E402

# Text that every Python has: the docstrings of some standard-library modules.
BUILTIN_MODULES = ["argparse", "collections", "csv", "dataclasses", "datetime", "decimal",
                   "difflib", "email", "functools", "heapq", "inspect", "itertools", "json",
                   "logging", "pathlib", "pickle", "random", "re", "statistics", "string",
                   "subprocess", "tarfile", "textwrap", "threading", "typing", "unittest",
                   "urllib", "zipfile"]


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

def builtin_corpus() -> str:
    import importlib
    docs = []
    for name in BUILTIN_MODULES:
        doc = importlib.import_module(name).__doc__
        if doc:
            docs.append(doc)
    text = " ".join(" ".join(docs).split())  # docstrings are indented: collapse white space
    if len(text) < 2000:
        raise RuntimeError("the standard library's docstrings are missing (python -OO?): "
                           "pass --corpus PATH")
    return text


def read_corpus(path: str) -> str:
    """A UTF-8 text file, or a .zip holding one (its first file)."""
    if path.endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if not n.endswith("/")]
            if not names:
                raise ValueError(f"{path}: the zip holds no file")
            with z.open(names[0]) as f:
                return io.TextIOWrapper(f, encoding="utf-8").read()
    with open(path, encoding="utf-8") as f:
        return f.read()


def build_vocab(text: str, max_chars: int):
    """The lesson's preprocessing: newlines to spaces, the first max_chars characters, a
    character vocabulary, and the corpus as indices."""
    text = text.replace("\n", " ").replace("\r", " ")[:max_chars]
    idx_to_char = sorted(set(text))
    char_to_idx = {c: i for i, c in enumerate(idx_to_char)}
    return [char_to_idx[c] for c in text], char_to_idx, idx_to_char


def data_iter_random(corpus, batch_size, num_steps, rng):
    """Random sampling: each example is a random, non-overlapping piece of the corpus; examples
    of consecutive minibatches are not adjacent. Yields X, Y: [B, T] int64."""
    num_examples = (len(corpus) - 1) // num_steps
    starts = list(range(num_examples))
    rng.shuffle(starts)
    for i in range(0, num_examples - batch_size + 1, batch_size):
        batch = starts[i:i + batch_size]
        X = [corpus[j * num_steps:(j + 1) * num_steps] for j in batch]
        Y = [corpus[j * num_steps + 1:(j + 1) * num_steps + 1] for j in batch]
        yield torch.tensor(X), torch.tensor(Y)


def data_iter_consecutive(corpus, batch_size, num_steps, rng):
    """Consecutive sampling: the corpus split into batch_size parallel streams; minibatch i+1
    continues minibatch i, so the hidden state can be carried (detached) across them."""
    offset = rng.randint(0, num_steps - 1)
    usable = (len(corpus) - 1 - offset) // batch_size * batch_size
    data = torch.tensor(corpus[offset:offset + usable + 1])
    xs = data[:-1].view(batch_size, -1)
    ys = data[1:].view(batch_size, -1)
    for i in range(0, xs.shape[1] - num_steps + 1, num_steps):
        yield xs[:, i:i + num_steps], ys[:, i:i + num_steps]


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------

class ReferenceRNN(nn.Module):
    """The textbook cells (fused_rnn.reference) with nn.*'s parameters: the slow oracle."""

    def __init__(self, cell, *args, **kwargs):
        super().__init__()
        self.inner = getattr(nn, cell)(*args, **kwargs)

    def forward(self, x, hx=None):
        return reference.run_module(self.inner, x, hx)


class CharLM(nn.Module):
    """Embedding-free char LM: the RNN sees one-hot characters (or, fused, their ids)."""

    def __init__(self, impl, cell, vocab_size, hidden, num_layers, bidirectional):
        super().__init__()
        kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=True)
        if impl == "fused":
            self.rnn = getattr(fused_rnn, cell)(vocab_size, hidden, **kw)
        elif impl == "torch":
            self.rnn = getattr(nn, cell)(vocab_size, hidden, **kw)
        else:
            self.rnn = ReferenceRNN(cell, vocab_size, hidden, **kw)
        self.impl, self.vocab_size = impl, vocab_size
        self.dense = nn.Linear(hidden * (2 if bidirectional else 1), vocab_size)

    def forward(self, ids, state=None):
        """ids: [B, T] int64 -> logits: [B, T, V], new state."""
        x = ids if self.impl == "fused" else F.one_hot(ids, self.vocab_size).float()
        out, state = self.rnn(x, state)
        return self.dense(out), state


def detach(state):
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def grad_clipping(params, theta):
    """Scale all gradients down together when their joint L2 norm exceeds theta."""
    torch.nn.utils.clip_grad_norm_(params, theta)


@torch.no_grad()
def predict(model, prefix, num_chars, char_to_idx, idx_to_char):
    """Feed the prefix, then generate num_chars characters greedily."""
    state, out_ids = None, [char_to_idx.get(prefix[0], 0)]
    for t in range(num_chars + len(prefix) - 1):
        logits, state = model(torch.tensor([[out_ids[-1]]]), state)
        if t < len(prefix) - 1:
            out_ids.append(char_to_idx.get(prefix[t + 1], 0))
        else:
            out_ids.append(int(logits[0, -1].argmax()))
    return "".join(idx_to_char[i] for i in out_ids)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------

def progress(done, total, start, width=30):
    frac = done / max(1, total)
    bar = "#" * int(width * frac) + "-" * (width - int(width * frac))
    sys.stderr.write(f"\r  [{bar}] {done}/{total} batches, {time.perf_counter() - start:.1f} s")
    sys.stderr.flush()


def train(args, impl, corpus, char_to_idx, idx_to_char, log):
    """Train one model; returns [(epoch, perplexity, seconds)]."""
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model = CharLM(impl, args.cell, len(idx_to_char), args.hidden, args.num_layers,
                   args.bidirectional)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    sampler = data_iter_random if args.sampling == "random" else data_iter_consecutive
    n_batches = sum(1 for _ in sampler(corpus, args.batch_size, args.num_steps, random.Random(0)))
    if args.max_batches:
        n_batches = min(n_batches, args.max_batches)
    curve = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        state, loss_sum, count, start = None, 0.0, 0, time.perf_counter()
        for i, (X, Y) in enumerate(sampler(corpus, args.batch_size, args.num_steps, rng)):
            if i >= n_batches:
                break
            if args.sampling == "random":
                state = None  # independent examples: start from zeros
            else:
                state = detach(state)  # carried across batches, not backpropagated through
            logits, state = model(X, state)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), Y.reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            grad_clipping(model.parameters(), args.clip)
            optimizer.step()
            loss_sum += loss.item() * Y.numel()
            count += Y.numel()
            if args.progress:
                progress(i + 1, n_batches, start)
        seconds = time.perf_counter() - start
        if args.progress:
            sys.stderr.write("\n")
        ppl = math.exp(loss_sum / max(1, count))
        curve.append((epoch, ppl, seconds))
        log(f"[{impl}] epoch {epoch}, perplexity {ppl:.2f}, time {seconds:.2f} s")
        if args.predict_every and (epoch % args.predict_every == 0 or epoch == args.epochs):
            model.eval()
            for prefix in args.prefixes:
                log(f"  - {predict(model, prefix, args.predict_len, char_to_idx, idx_to_char)!r}")
    return curve


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=None, help="UTF-8 text file or .zip with one (default: "
                    "docstrings of the Python standard library)")
    ap.add_argument("--max-chars", type=int, default=10000,
                    help="use the first N characters (the lesson: 10000)")
    ap.add_argument("--cell", default="GRU", choices=["GRU", "LSTM", "RNN"])
    ap.add_argument("--impl", default="fused", choices=["fused", "torch", "reference"])
    ap.add_argument("--compare", action="store_true", help="train fused and torch, same seed")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--num-layers", type=int, default=1)
    ap.add_argument("--bidirectional", action="store_true")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--num-steps", type=int, default=35)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--clip", type=float, default=1e-2, help="gradient-norm clipping threshold")
    ap.add_argument("--sampling", default="consecutive", choices=["random", "consecutive"])
    ap.add_argument("--max-batches", type=int, default=0, help="cap batches per epoch (0: all)")
    ap.add_argument("--predict-every", type=int, default=5)
    ap.add_argument("--predict-len", type=int, default=50)
    ap.add_argument("--prefixes", nargs="+", default=["The ", "This module "])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    text = read_corpus(args.corpus) if args.corpus else builtin_corpus()
    corpus, char_to_idx, idx_to_char = build_vocab(text, args.max_chars)
    print(f"corpus: {args.corpus or 'Python standard-library docstrings'}, {len(corpus)} "
          f"characters, vocabulary {len(idx_to_char)}; {args.cell} hidden {args.hidden}, "
          f"{args.num_layers} layer(s){', bidirectional' if args.bidirectional else ''}, "
          f"{args.num_steps} steps, batch {args.batch_size}, {args.sampling} sampling, "
          f"{torch.get_num_threads()} threads")
    impls = ["fused", "torch"] if args.compare else [args.impl]
    curves = {impl: train(args, impl, corpus, char_to_idx, idx_to_char, print) for impl in impls}

    print("\n| epoch | " + " | ".join(f"{i} perplexity | {i} s" for i in impls) + " |")
    print("|---|" + "---|---|" * len(impls))
    for e in range(args.epochs):
        print(f"| {e + 1} | " + " | ".join(f"{curves[i][e][1]:.2f} | {curves[i][e][2]:.2f}"
                                           for i in impls) + " |")
    if args.compare:
        t_f = sum(c[2] for c in curves["fused"]) / args.epochs
        t_t = sum(c[2] for c in curves["torch"]) / args.epochs
        print(f"\nmean epoch time: fused {t_f:.2f} s, torch {t_t:.2f} s -> fused {t_t / t_f:.2f}x "
              f"faster; final perplexity fused {curves['fused'][-1][1]:.2f}, torch "
              f"{curves['torch'][-1][1]:.2f}")
    return curves


if __name__ == "__main__":
    main()
