"""from_torch / replace_rnns: every nn.GRU / LSTM / RNN swapped in place, weights kept."""
import pytest
import torch
from torch import nn

import fused_rnn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.encoder = nn.Sequential(nn.LSTM(6, 8, batch_first=True, bidirectional=True))
        self.gru = nn.GRU(16, 5, num_layers=2, batch_first=True)
        self.heads = nn.ModuleList([nn.RNN(5, 4, nonlinearity="relu", batch_first=True), nn.Linear(4, 3)])

    def forward(self, ids):
        x, _ = self.encoder[0](self.embed(ids))
        x, _ = self.gru(x)
        x, _ = self.heads[0](x)
        return self.heads[1](x)


def test_replace_rnns_swaps_every_rnn_and_keeps_results():
    torch.manual_seed(0)
    model = Model().eval()
    ids = torch.randint(0, 11, (3, 7))
    want = model(ids)
    same = fused_rnn.replace_rnns(model)
    assert same is model
    assert type(model.encoder[0]) is fused_rnn.LSTM
    assert type(model.gru) is fused_rnn.GRU
    assert type(model.heads[0]) is fused_rnn.RNN and model.heads[0].nonlinearity == "relu"
    assert not any(type(m) in (nn.GRU, nn.LSTM, nn.RNN) for m in model.modules())
    torch.testing.assert_close(model(ids), want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
def test_from_torch_copies_configuration_weights_and_mode(cell):
    ref = getattr(nn, cell)(3, 4, num_layers=2, bias=False, batch_first=True, dropout=0.1,
                            bidirectional=True, dtype=torch.float64).eval()
    fused = fused_rnn.from_torch(ref)
    assert repr(fused) == repr(ref) and not fused.training
    for (n, a), (_, b) in zip(fused.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b) and a.dtype == torch.float64, n


def test_replace_rnns_on_a_bare_rnn_returns_the_fused_module():
    assert type(fused_rnn.replace_rnns(nn.GRU(2, 3))) is fused_rnn.GRU


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match="expected nn.GRU, nn.LSTM or nn.RNN, got Linear"):
        fused_rnn.from_torch(nn.Linear(2, 3))
