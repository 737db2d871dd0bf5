"""Same constructor, parameters, state_dict and repr as nn.GRU / nn.LSTM / nn.RNN; unsupported
options raise clear errors instead of computing something else."""
import pytest
import torch
from torch import nn

import fused_rnn

KWARGS = [dict(), dict(num_layers=3, bias=False), dict(batch_first=True, bidirectional=True),
          dict(num_layers=2, dropout=0.25)]


@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
@pytest.mark.parametrize("kw", KWARGS + [dict(nonlinearity="relu")])
def test_parameters_state_dict_and_repr_match_nn(cell, kw):
    if "nonlinearity" in kw and cell != "RNN":
        pytest.skip("nonlinearity is nn.RNN's only")
    ref = getattr(nn, cell)(7, 5, **kw)
    fused = getattr(fused_rnn, cell)(7, 5, **kw)
    assert repr(fused) == repr(ref)
    assert [(n, p.shape) for n, p in fused.named_parameters()] == \
           [(n, p.shape) for n, p in ref.named_parameters()]
    assert list(fused.state_dict()) == list(ref.state_dict())
    # state_dicts load both ways
    ref.load_state_dict(fused.state_dict())
    fused.load_state_dict(ref.state_dict())
    for (n, a), (_, b) in zip(fused.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_positional_constructor_arguments(cell):
    ref = getattr(nn, cell)(3, 4, 2, False, True, 0.0, True)
    fused = getattr(fused_rnn, cell)(3, 4, 2, False, True, 0.0, True)
    assert repr(fused) == repr(ref)


def test_rnn_positional_nonlinearity_like_nn():
    ref = nn.RNN(3, 4, 2, "relu", False, True)
    fused = fused_rnn.RNN(3, 4, 2, "relu", False, True)
    assert repr(fused) == repr(ref) and fused.nonlinearity == "relu"


def test_rnn_unknown_nonlinearity():
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'. Select from 'tanh' or 'relu'."):
        fused_rnn.RNN(3, 4, nonlinearity="gelu")


@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
def test_not_an_instance_of_nn_classes_but_of_rnnbase(cell):
    """torch.compile refuses instances of nn.GRU/LSTM/RNN; ours are nn.RNNBase only."""
    m = getattr(fused_rnn, cell)(2, 3)
    assert isinstance(m, nn.RNNBase) and not isinstance(m, (nn.GRU, nn.LSTM, nn.RNN))


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_factory_kwargs(cell):
    m = getattr(fused_rnn, cell)(3, 4, dtype=torch.float64, device="cpu")
    assert all(p.dtype == torch.float64 for p in m.parameters())
    out, _ = m(torch.randn(2, 1, 3, dtype=torch.float64))
    assert out.dtype == torch.float64


def test_gru_rejects_proj_size_like_nn():
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        fused_rnn.GRU(3, 4, proj_size=2)


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_flatten_parameters_is_harmless(cell):
    m = getattr(fused_rnn, cell)(3, 4)
    m.flatten_parameters()
    out, _ = m(torch.randn(2, 1, 3))
    assert out.shape == (2, 1, 4)


def test_gru_textbook_option_keeps_parameters_and_marks_repr():
    ref = nn.GRU(3, 4, num_layers=2)
    m = fused_rnn.GRU(3, 4, num_layers=2, reset_after=False)
    assert list(m.state_dict()) == list(ref.state_dict())
    m.load_state_dict(ref.state_dict())
    assert repr(m) == "GRU(3, 4, num_layers=2, reset_after=False)"
    assert repr(fused_rnn.GRU(3, 4)) == repr(nn.GRU(3, 4))


def test_gru_textbook_module_matches_reference_deep_bidirectional():
    """Module with reset_after=False against the lesson's cell, layer by layer."""
    from fused_rnn import reference
    torch.manual_seed(0)
    m = fused_rnn.GRU(3, 4, num_layers=2, bidirectional=True, reset_after=False, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    out, h_n = m(x)
    layer_in, finals = x, []
    for layer in range(2):
        outs = []
        for d, sfx in enumerate(["", "_reverse"]):
            w = [getattr(m, f"{n}_l{layer}{sfx}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            o, h = reference.gru(layer_in, torch.zeros(2, 4, dtype=torch.float64),
                                 reference.gru_params_from_torch(*w), reverse=d == 1, reset_after=False)
            outs.append(o)
            finals.append(h)
        layer_in = torch.cat(outs, 2)
    torch.testing.assert_close(out, layer_in)
    torch.testing.assert_close(h_n, torch.stack(finals))


@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
def test_parametrized_weight_is_the_one_used(cell):
    """A parametrization (here weight_norm on weight_hh_l0, the weight becomes a property) is
    what the layer computes with: same output as a plain module holding the parametrized
    value, and gradients reach the parametrization's own parameters."""
    torch.manual_seed(0)
    m = getattr(fused_rnn, cell)(4, 5, num_layers=2)
    plain = getattr(fused_rnn, cell)(4, 5, num_layers=2)
    nn.utils.parametrizations.weight_norm(m, "weight_hh_l1")
    with torch.no_grad():
        m.parametrizations.weight_hh_l1.original0.mul_(1.7)  # the weight's norms change
        plain.load_state_dict({k: v for k, v in m.state_dict().items()
                               if "parametrizations" not in k}, strict=False)
        plain.weight_hh_l1.copy_(m.weight_hh_l1)
    x = torch.randn(3, 2, 4)
    out, _ = m(x)
    torch.testing.assert_close(out, plain(x)[0])
    assert not torch.allclose(out, plain.__class__(4, 5, num_layers=2)(x)[0])
    out.sum().backward()
    assert m.parametrizations.weight_hh_l1.original0.grad.abs().sum() > 0


@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
def test_functional_call_weights_are_the_ones_used(cell):
    """torch.func.functional_call swaps the parameters: the layer computes with the swapped
    ones (same output as a module holding them), and the module's own are untouched."""
    torch.manual_seed(0)
    m = getattr(fused_rnn, cell)(4, 5)
    other = getattr(fused_rnn, cell)(4, 5)
    x = torch.randn(3, 2, 4)
    own = m(x)[0]
    swapped = torch.func.functional_call(m, dict(other.named_parameters()), (x,))[0]
    torch.testing.assert_close(swapped, other(x)[0])
    torch.testing.assert_close(m(x)[0], own)
    assert not torch.allclose(swapped, own)


@pytest.mark.parametrize("reentrant", [False, True], ids=["nonreentrant", "reentrant"])
@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
def test_activation_checkpointing_gives_the_same_gradients(cell, reentrant):
    """torch.utils.checkpoint reruns the fused forward in the backward (both implementations):
    the gradients of input and every parameter equal those of the plain run."""
    from torch.utils.checkpoint import checkpoint
    torch.manual_seed(0)
    m = getattr(fused_rnn, cell)(4, 6, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 4, requires_grad=True)
    leaves = [x, *m.parameters()]

    def loss(x):
        return m(x)[0].square().sum()

    def grads(value):
        for t in leaves:
            t.grad = None
        value.backward()
        return [t.grad.clone() for t in leaves]
    plain = grads(loss(x))
    checkpointed = grads(checkpoint(loss, x, use_reentrant=reentrant))
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b)
