"""torch.func transforms over the fused modules: grad, per-sample gradients (vmap of grad), vjp
and jacrev give nn.*'s numbers; forward mode (jvp, hessian, forward_ad) and second derivatives
raise errors that name fused_rnn. torch.library's register_autograd Function has no
setup_context and torch.func refuses it (pytorch/pytorch#168393), so the operators run through
fused_rnn's own torch.func-ready Functions there (fused_rnn/_ops.py, _call)."""
import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, hessian, jacrev, jvp, vjp, vmap

import fused_rnn
from helpers import DEVICES, GRAD_TOL, TOL

CELLS = [("GRU", {}), ("GRU", {"reset_after": False}), ("LSTM", {}), ("LSTM", {"proj_size": 2}),
         ("RNN", {}), ("RNN", {"nonlinearity": "relu"})]
IDS = ["gru", "gru_textbook", "lstm", "lstm_proj", "rnn_tanh", "rnn_relu"]


def pair(cell, kw, device, **more):
    """nn.* module (None for the textbook GRU, which nn.* lacks) and the fused one, same
    weights."""
    torch.manual_seed(0)
    fused = getattr(fused_rnn, cell)(3, 4, device=device, **kw, **more)
    if kw.get("reset_after") is False:
        return None, fused
    ref = getattr(nn, cell)(3, 4, device=device, **kw, **more)
    ref.load_state_dict(fused.state_dict())
    return ref, fused


def params(module):
    return {k: v.detach() for k, v in module.named_parameters()}


def loss_fn(module):
    # (params, x: [T, B, 3] or [T, 3]) -> scalar
    return lambda p, x: functional_call(module, p, (x,))[0].square().sum()


def assert_dicts_close(got, want, tol):
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], **tol, msg=lambda m: f"{k}: {m}")


def autograd_grads(module, x):
    """Parameter and input gradients of loss_fn by ordinary autograd (the oracle)."""
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    module(x)[0].square().sum().backward()
    return {k: v.grad for k, v in module.named_parameters()}, x.grad


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell,kw", CELLS, ids=IDS)
def test_func_grad_matches_autograd_and_nn(cell, kw, device):
    ref, fused = pair(cell, kw, device, num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3, device=device)  # [T, B, I]
    g_params, g_x = grad(loss_fn(fused), argnums=(0, 1))(params(fused), x)
    want_params, want_x = autograd_grads(ref if ref is not None else fused, x)
    assert_dicts_close(g_params, want_params, GRAD_TOL[torch.float32])
    torch.testing.assert_close(g_x, want_x, **GRAD_TOL[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell,kw", CELLS, ids=IDS)
def test_per_sample_gradients_by_vmap_of_grad(cell, kw, device):
    """vmap(grad(loss)) over a batch of unbatched sequences [T, I] equals one grad per sample."""
    ref, fused = pair(cell, kw, device, num_layers=2)
    xs = torch.randn(3, 6, 3, device=device)  # [samples, T, I]
    got = vmap(grad(loss_fn(fused)), in_dims=(None, 0))(params(fused), xs)
    oracle = ref if ref is not None else fused
    per_sample = [autograd_grads(oracle, xs[i])[0] for i in range(xs.shape[0])]
    want = {k: torch.stack([g[k] for g in per_sample]) for k in per_sample[0]}
    assert_dicts_close(got, want, GRAD_TOL[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
def test_vjp_and_jacrev_match_nn(cell, device):
    ref, fused = pair(cell, {}, device, bidirectional=True)
    x = torch.randn(4, 2, 3, device=device)
    f = lambda m: (lambda x: functional_call(m, params(m), (x,))[0])  # noqa: E731
    out, pullback = vjp(f(fused), x)
    torch.testing.assert_close(out, ref(x)[0], **TOL[torch.float32])
    cotangent = torch.randn_like(out)
    xr = x.clone().requires_grad_(True)
    want, = torch.autograd.grad(ref(xr)[0], xr, cotangent)
    torch.testing.assert_close(pullback(cotangent)[0], want, **GRAD_TOL[torch.float32])
    jac = jacrev(f(fused))(x)                                   # [T, B, 2H, T, B, I]
    yr = ref(xr)[0].reshape(-1)
    rows = [torch.autograd.grad(yr[i], xr, retain_graph=True)[0] for i in range(yr.numel())]
    torch.testing.assert_close(jac, torch.stack(rows).reshape(jac.shape),
                               **GRAD_TOL[torch.float32])


@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
def test_func_grad_with_lengths_matches_autograd(cell):
    """The per-sequence lengths reach the operator under torch.func too."""
    _, fused = pair(cell, {}, "cpu")
    x = torch.randn(5, 3, 3)
    lengths = torch.tensor([5, 2, 4])
    p = params(fused)
    got = grad(lambda p: functional_call(fused, p, (x,), {"lengths": lengths})[0].sum())(p)
    fused.zero_grad(set_to_none=True)
    fused(x, lengths=lengths)[0].sum().backward()
    assert_dicts_close(got, {k: v.grad for k, v in fused.named_parameters()},
                       GRAD_TOL[torch.float32])


@pytest.mark.parametrize("cell,kw", CELLS, ids=IDS)
@pytest.mark.parametrize("transform", ["jvp", "hessian", "forward_ad"])
def test_forward_mode_raises_naming_fused_rnn(cell, kw, transform):
    _, fused = pair(cell, kw, "cpu")
    x = torch.randn(4, 2, 3)
    f = lambda x: functional_call(fused, params(fused), (x,))[0]  # noqa: E731
    with pytest.raises(NotImplementedError, match="fused_rnn: forward-mode AD .* not supported"):
        if transform == "jvp":
            jvp(f, (x,), (torch.ones_like(x),))
        elif transform == "hessian":
            hessian(lambda x: f(x).sum())(x)
        else:
            import torch.autograd.forward_ad as fwAD
            with fwAD.dual_level():
                fused(fwAD.make_dual(x, torch.ones_like(x)))


@pytest.mark.parametrize("cell,kw", CELLS, ids=IDS)
def test_grad_of_grad_raises_double_backward_error(cell, kw):
    _, fused = pair(cell, kw, "cpu")
    x = torch.randn(4, 2, 3)
    inner = grad(lambda x: functional_call(fused, params(fused), (x,))[0].square().sum())
    with pytest.raises(RuntimeError, match="double backward is not supported"):
        grad(lambda x: inner(x).sum())(x)
