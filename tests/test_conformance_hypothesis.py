"""Property-based conformance with nn.*: hypothesis draws a configuration (cell, sizes, layers,
directions, batch_first, bias, LSTM proj_size, initial states, packed per-sequence lengths with
enforce_sorted either way, dtype) and the fused module must match nn.* with copied weights in
outputs, final states and the gradients of input, states and every parameter.

Profiles (FUSED_RNN_HYPOTHESIS_PROFILE): "ci" (default, 200 examples per device) and "long"
(3000 examples, for local runs)."""
import os

import pytest
import torch
from torch import nn

from helpers import DEVICES, GRAD_TOL, TOL, flat, grads, nn_and_fused

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is a test extra")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=3000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("FUSED_RNN_HYPOTHESIS_PROFILE", "ci")


@st.composite
def configs(draw):
    cell = draw(st.sampled_from(["GRU", "LSTM", "RNN_TANH", "RNN_RELU"]))
    T, B = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    H = draw(st.integers(1, 9))
    c = dict(cell=cell, T=T, B=B, I=draw(st.integers(1, 7)), H=H,
             num_layers=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()),
             batch_first=draw(st.booleans()), bias=draw(st.booleans()),
             dtype=draw(st.sampled_from([torch.float32, torch.float64])),
             with_hx=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 16)))
    c["proj_size"] = draw(st.integers(0, H - 1)) if cell == "LSTM" and H > 1 else 0
    c["lengths"] = draw(st.none() | st.lists(st.integers(1, T), min_size=B, max_size=B))
    c["enforce_sorted"] = draw(st.booleans())
    if c["lengths"] is not None and c["enforce_sorted"]:
        c["lengths"] = sorted(c["lengths"], reverse=True)
    return c


def build(c, device):
    kw = dict(num_layers=c["num_layers"], bidirectional=c["bidirectional"],
              batch_first=c["batch_first"], bias=c["bias"])
    if c["proj_size"]:
        kw["proj_size"] = c["proj_size"]
    cell = "RNN" if c["cell"] == "RNN_TANH" else c["cell"]  # RNN_RELU: nn_and_fused's name
    return nn_and_fused(cell, c["I"], c["H"], c["dtype"], device, **kw)


def check(c, device):
    torch.manual_seed(c["seed"])
    ref, fused = build(c, device)
    dt, T, B = c["dtype"], c["T"], c["B"]
    x = torch.randn(*((B, T, c["I"]) if c["batch_first"] else (T, B, c["I"])), dtype=dt,
                    device=device, requires_grad=True)
    D = 2 if c["bidirectional"] else 1
    hx, leaves = None, [x]
    if c["with_hx"]:
        h = torch.randn(c["num_layers"] * D, B, c["proj_size"] or c["H"], dtype=dt,
                        device=device, requires_grad=True)
        leaves.append(h)
        if c["cell"] == "LSTM":
            cc = torch.randn(c["num_layers"] * D, B, c["H"], dtype=dt, device=device,
                             requires_grad=True)
            leaves.append(cc)
            hx = (h, cc)
        else:
            hx = h
    inp = x
    if c["lengths"] is not None:
        inp = nn.utils.rnn.pack_padded_sequence(x, torch.tensor(c["lengths"]),
                                                batch_first=c["batch_first"],
                                                enforce_sorted=c["enforce_sorted"])

    got, want = flat(*fused(inp, hx)), flat(*ref(inp, hx))
    for g, w, n in zip(got, want, ["output", "h_n", "c_n"]):
        assert g.shape == w.shape, (n, c)
        torch.testing.assert_close(g, w, **TOL[dt], msg=lambda m: f"{n} {c}: {m}")
    seeds = [torch.randn_like(w) for w in want]
    names = ["input", "h0", "c0"][:len(leaves)] + [n for n, _ in ref.named_parameters()]
    for a, b, n in zip(grads(got, leaves + list(fused.parameters()), seeds),
                       grads(want, leaves + list(ref.parameters()), seeds), names):
        torch.testing.assert_close(a, b, **GRAD_TOL[dt], msg=lambda m: f"grad {n} {c}: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_random_configurations_match_nn(device):
    """(conftest turns TF32 off, so cuDNN's float32 is comparable on CUDA)"""

    @settings(settings.get_profile(PROFILE))
    @given(configs())
    def run(c):
        check(c, device)

    run()
