"""torch.compile(fullgraph=True) traces models using the fused layers with no graph break
(nn.GRU / nn.LSTM / nn.RNN graph-break there), and gives eager's results and gradients, for
every cell and the options: layers, directions, batch_first, bias, token input, lengths."""
import pytest
import torch
from torch import nn

import fused_rnn
from helpers import assert_close, assert_grads_close


class Classifier(nn.Module):
    """Many-to-one: RNN over the sequence, last step of the output into a linear layer."""

    def __init__(self, cell, input_size=6, **kw):
        super().__init__()
        self.rnn = getattr(fused_rnn, cell)(input_size, 8, batch_first=True, **kw)
        self.head = nn.Linear(8 * (2 if kw.get("bidirectional") else 1), 3)

    def forward(self, x, lengths=None):
        out, _ = self.rnn(x, lengths=lengths)
        return self.head(out[:, -1])


def check(model, *args):
    torch._dynamo.reset()
    eager = model(*args)
    eager_grads = torch.autograd.grad(eager.square().sum(), list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(*args)
    got_grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    assert_close(out, eager, torch.float32, "output")
    assert_grads_close(got_grads, eager_grads, torch.float32, [n for n, _ in model.named_parameters()])


@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
@pytest.mark.parametrize("kw", [dict(num_layers=2, bidirectional=True), dict(bias=False),
                                dict(dropout=0.0, num_layers=2)], ids=["deep_bi", "nobias", "2layer"])
def test_compile_fullgraph_forward_backward(cell, kw):
    torch.manual_seed(0)
    check(Classifier(cell, **kw), torch.randn(4, 5, 6))


@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
def test_compile_fullgraph_token_input_and_lengths(cell):
    torch.manual_seed(0)
    model = Classifier(cell, input_size=10, bidirectional=True)
    check(model, torch.randint(0, 10, (3, 5)), torch.tensor([5, 2, 4]))


def test_compile_inductor_fullgraph_gru():
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = Classifier("GRU")
    x = torch.randn(2, 3, 6)
    compiled = torch.compile(model, fullgraph=True)
    assert_close(compiled(x), model(x), torch.float32, "output")


def test_nn_gru_itself_cannot_be_compiled_fullgraph():
    """What the fused modules fix: nn.GRU is refused by dynamo."""
    torch._dynamo.reset()
    m = nn.GRU(3, 4)
    with pytest.raises(Exception, match="RNN, GRU, or LSTM"):
        torch.compile(m, fullgraph=True, backend="aot_eager")(torch.randn(2, 1, 3))
