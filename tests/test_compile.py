"""torch.compile(fullgraph=True) traces models using the fused layers with no graph break
(nn.GRU / nn.LSTM / nn.RNN graph-break there), and gives eager's results and gradients, for
every cell and the options: layers, directions, batch_first, bias, token input, lengths, and
PackedSequence input (enforce_sorted=False, or an initial state giving the batch size); and
torch.export captures the fused operators."""
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


class PackedClassifier(nn.Module):
    """Many-to-one over a PackedSequence: the final state of the last layer into a linear layer;
    the packed output is used too (its data summed in), so repacking is traced as well."""

    def __init__(self, cell, input_size=6, **kw):
        super().__init__()
        self.rnn = getattr(fused_rnn, cell)(input_size, 8, **kw)
        self.head = nn.Linear(8, 3)

    def forward(self, packed, hx=None):
        out, state = self.rnn(packed, hx)
        h = state[0] if isinstance(state, tuple) else state
        return self.head(h[-1]) + out.data.sum()


@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
@pytest.mark.parametrize("tokens", [False, True], ids=["features", "token_ids"])
def test_compile_fullgraph_packed_sequence_unsorted(cell, tokens):
    torch.manual_seed(0)
    x = torch.randint(0, 10, (5, 4)) if tokens else torch.randn(5, 4, 6)
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([2, 5, 1, 3]),
                                               enforce_sorted=False)
    check(PackedClassifier(cell, input_size=10 if tokens else 6, num_layers=2), packed)


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_compile_fullgraph_packed_sequence_sorted_with_state(cell):
    torch.manual_seed(0)
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(5, 3, 6), torch.tensor([5, 3, 2]))
    h0 = torch.randn(1, 3, 8)
    check(PackedClassifier(cell), packed, (h0, torch.randn(1, 3, 8)) if cell == "LSTM" else h0)


def test_compile_packed_state_batch_mismatch_raises():
    """The batch size taken from the state is checked against batch_sizes[0] in the graph."""
    torch._dynamo.reset()
    model = PackedClassifier("GRU")
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(4, 3, 6), torch.tensor([4, 3, 2]))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with pytest.raises(RuntimeError, match="initial state's batch size differs"):
        compiled(packed, torch.randn(1, 2, 8))


def test_compile_packed_sorted_without_state_says_what_to_do():
    """enforce_sorted=True and no initial state: the batch size is only a value
    (batch_sizes[0]); without scalar capture the error says which inputs compile."""
    torch._dynamo.reset()
    model = PackedClassifier("GRU")
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(4, 2, 6), torch.tensor([4, 2]))
    with pytest.raises(Exception, match="pack with enforce_sorted=False, pass the initial"):
        torch.compile(model, fullgraph=True, backend="aot_eager")(packed)


@pytest.mark.parametrize("cell", ["GRU", "LSTM"])
def test_compile_fullgraph_packed_sorted_without_state_with_scalar_capture(cell):
    """With dynamo's capture_scalar_outputs the batch size becomes an unbacked size."""
    torch.manual_seed(0)
    packed = nn.utils.rnn.pack_padded_sequence(torch.randn(5, 3, 6), torch.tensor([5, 3, 2]))
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        check(PackedClassifier(cell, bidirectional=False), packed)


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


@pytest.mark.parametrize("strict", [False, True], ids=["nonstrict", "strict"])
@pytest.mark.parametrize("cell", ["GRU", "LSTM", "RNN"])
def test_torch_export_records_the_fused_operator(cell, strict):
    """torch.export (with gradients enabled, where eager calls go through fused_rnn's own
    autograd.Function) captures the fused operator itself, and the exported program computes
    eager's output."""
    torch.manual_seed(0)
    model = Classifier(cell, num_layers=2)
    x = torch.randn(3, 5, 6)
    program = torch.export.export(model, (x,), strict=strict)
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert f"fused_rnn.{cell.lower()}_forward.default" in targets
    assert_close(program.module()(x), model(x), torch.float32, "output")
