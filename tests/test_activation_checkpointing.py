"""enable_activation_checkpointing against the same model without it: each decoder layer runs
its forward a second time during backward, the gradients are the same, and no deprecation
warning is raised."""

import warnings

import torch
from models import tiny_model

from axolab.activation_checkpointing import enable_activation_checkpointing


def _forward_backward(checkpointing: bool):
    model = tiny_model("llama", tied=False)
    calls = []
    for layer in model.model.layers:  # the checkpoint wraps the layer: count inside it
        layer.mlp.register_forward_pre_hook(lambda m, a: calls.append(m) or None)
    if checkpointing:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            enable_activation_checkpointing(model)
    model.train()
    ids = torch.randint(0, 99, (2, 6), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return len(calls), len(model.model.layers), grads


def test_checkpointing_recomputes_each_layer_once_with_the_same_gradients():
    plain_calls, layers, plain = _forward_backward(False)
    calls, _, grads = _forward_backward(True)
    assert plain_calls == layers
    assert calls == 2 * layers
    for name, g in plain.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7, msg=name)
