"""Swap nn.GRU / nn.LSTM / nn.RNN for the fused modules, keeping weights."""
from torch import nn

from .modules import GRU, LSTM, RNN

_FUSED = {nn.GRU: GRU, nn.LSTM: LSTM, nn.RNN: RNN}


def from_torch(module: nn.RNNBase) -> nn.RNNBase:
    """A fused_rnn module with the configuration, parameters (same tensors' values, device and
    dtype) and train/eval mode of `module` (an nn.GRU, nn.LSTM or nn.RNN)."""
    fused_cls = _FUSED.get(type(module))
    if fused_cls is None:
        raise TypeError(f"fused_rnn.from_torch: expected nn.GRU, nn.LSTM or nn.RNN, got "
                        f"{type(module).__name__}")
    kwargs = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
                  dropout=module.dropout, bidirectional=module.bidirectional,
                  device=module.weight_ih_l0.device, dtype=module.weight_ih_l0.dtype)
    if isinstance(module, nn.LSTM):
        kwargs["proj_size"] = module.proj_size
    if isinstance(module, nn.RNN):
        kwargs["nonlinearity"] = module.nonlinearity
    # nn.GRU is PyTorch's cell: fused_rnn.GRU's default reset_after=True is the same
    fused = fused_cls(module.input_size, module.hidden_size, **kwargs)
    fused.load_state_dict(module.state_dict())
    fused.train(module.training)
    return fused


def replace_rnns(model: nn.Module) -> nn.Module:
    """Replace, in place, every nn.GRU / nn.LSTM / nn.RNN inside `model` (or `model` itself) by
    its fused equivalent with the same weights. Returns the model (the new module if `model`
    itself was an RNN)."""
    if type(model) in _FUSED:
        return from_torch(model)
    for name, child in model.named_children():
        if type(child) in _FUSED:
            setattr(model, name, from_torch(child))
        else:
            replace_rnns(child)
    return model
