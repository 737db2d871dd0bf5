"""torch.compile(fullgraph=True) traces models using the fused layers with no graph break
(nn.GRU / nn.LSTM graph-break there), and gives eager's results and gradients."""
import pytest
import torch
from torch import nn

import fused_rnn
from helpers import assert_close, assert_grads_close


class Classifier(nn.Module):
    """A many-to-one model: embedding-free RNN, last step into a linear layer."""

    def __init__(self, cell):
        super().__init__()
        self.rnn = getattr(fused_rnn, cell)(6, 8, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_compile_fullgraph_forward_backward(cell):
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = Classifier(cell)
    x = torch.randn(4, 5, 6)
    eager = model(x)
    eager_grads = torch.autograd.grad(eager.square().sum(), list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    got_grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    assert_close(out, eager, torch.float32, "output")
    assert_grads_close(got_grads, eager_grads, torch.float32, [n for n, _ in model.named_parameters()])


def test_compile_inductor_fullgraph_gru():
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = Classifier("GRU")
    x = torch.randn(2, 3, 6)
    compiled = torch.compile(model, fullgraph=True)
    assert_close(compiled(x), model(x), torch.float32, "output")
