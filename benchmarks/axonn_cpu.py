"""Run AxoNN 0.2.0 (PyPI ``axonn``) on CPU ranks with gloo, for benchmarks/axonn_compare.py.

AxoNN as shipped is CUDA-only and was written against transformers 4.40. :func:`patch` makes
the smallest runtime changes that let its own code run unchanged on CPU with gloo; nothing of
AxoNN is copied. Every change is scoped to AxoNN's modules (their ``torch``/``dist`` globals
are swapped for the shims below), so axolab, running in the same processes, sees plain torch.

1. ``device="cuda"`` allocations -> CPU. ``torch.empty``/``torch.tensor(..., device="cuda")``
   in asym_communication (activation re-layout buffers, batch-size exchange), in
   intra_layer.communication (reduce-scatter output, ``torch.cuda.current_device()``) and in
   fully_connected.initialize_params (weights are initialized on "cuda", then moved to CPU).
2. ``torch.cuda.set_device`` in ``ax.init`` -> no-op (there is no GPU to pin). ``ax.init`` is
   called with ``gpus_per_node=1`` so that ``torch.cuda.device_count()`` (0) is not used.
3. ``new_group(backend="nccl")`` in ``ax.init`` -> the default backend of the already
   initialized world (gloo). The groups and their ranks are AxoNN's own.
4. ``torch.cuda.synchronize()`` in ``overlap_communication.clear_handles`` -> wait on the
   handles AxoNN registered. On CUDA the synchronize is what completes the asynchronous
   (overlapped) reduce-scatters before their gradients are accumulated; with gloo the only way
   to complete an async collective is ``work.wait()``. AxoNN keeps every such handle in
   ``overlap_communication.handles``, so this waits for exactly the same work.
5. ``all_gather_into_tensor`` in asym_communication and overlap_communication: gloo refuses
   two inputs that NCCL takes. A 0-d tensor (``gather_batch_sizes`` gathers its 0-d batch
   size; gloo wants the input shaped like one slice of the output) is viewed as 1 element.
   An input that requires grad, gathered asynchronously in grad mode (the weight prefetch
   that ``optimize_communication(overlap_all_gather=True)`` starts on entry), fails at
   ``wait()`` ("A view was created in no_grad mode..."), so the input is passed detached;
   collectives are not recorded by autograd anyway. Same collective, same result.
6. transformers 5 compatibility of the HF path (``axonn.models.transformers``):
   - ``modeling_mixtral.MixtralBlockSparseTop2MLP`` no longer exists; the package imports it at
     import time for its Mixtral patch (unused here), so a placeholder class is added.
   - the Llama attention ``__init__`` that AxoNN substitutes reads ``config.rope_theta`` (now in
     ``config.rope_parameters``) and calls ``self._init_rope()`` (rotary embeddings moved to
     ``LlamaModel.rotary_emb``), and does not set ``self.scaling`` (read by the 5.x forward).
     It is wrapped: rope_theta is provided, ``_init_rope`` is a no-op, and ``scaling`` is set
     to ``head_dim**-0.5`` as 5.x does. The Linear layers it builds are untouched.
CUDA streams: AxoNN 0.2.0 uses none of its own; its overlap is NCCL ``async_op=True``
collectives, which gloo runs on its own threads, so nothing else needs patching.
"""

from __future__ import annotations

import types

import torch
import torch.distributed as dist

_PATCHED = False


def _no_device(kwargs: dict) -> dict:
    kwargs.pop("device", None)  # "cuda" or a CUDA index in AxoNN: allocate on the CPU instead
    return kwargs


class _Distributed(types.ModuleType):
    """torch.distributed for AxoNN's modules: creates groups on the world's backend (gloo);
    all_gather_into_tensor takes what NCCL takes (a 0-d input, an input requiring grad)."""

    def __init__(self):
        super().__init__("torch.distributed")

    def __getattr__(self, name):
        return getattr(dist, name)

    @staticmethod
    def new_group(*args, backend=None, **kwargs):
        return dist.new_group(*args, **kwargs)  # backend="nccl" -> the default (gloo)

    @staticmethod
    def all_gather_into_tensor(output, input_, *args, **kwargs):
        return dist.all_gather_into_tensor(output, input_.detach().reshape(-1), *args, **kwargs)


class _Cuda:
    """torch.cuda as AxoNN calls it, on a machine without CUDA."""

    @staticmethod
    def set_device(device):
        pass

    @staticmethod
    def current_device():
        return "cpu"

    @staticmethod
    def synchronize():
        from axonn.intra_layer import overlap_communication as oc

        for handle in oc.handles:  # every async collective AxoNN left in flight
            handle.wait()


class _Torch(types.ModuleType):
    """The ``torch`` global of AxoNN's modules: real torch except for the CUDA-only calls."""

    def __init__(self):
        super().__init__("torch")
        self.cuda = _Cuda()
        self.distributed = _Distributed()

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs):
        return torch.empty(*args, **_no_device(kwargs))

    @staticmethod
    def tensor(*args, **kwargs):
        return torch.tensor(*args, **_no_device(kwargs))


def _patch_llama_attention_init() -> None:
    from axonn.models.transformers import modify_llama
    from transformers.models.llama.modeling_llama import LlamaAttention

    original = modify_llama.modified_attention_init

    def attention_init(self, config, layer_idx=None):
        if not hasattr(config, "rope_theta"):  # 4.x name, read (not used) by AxoNN's init
            config.rope_theta = (getattr(config, "rope_parameters", None) or {}).get(
                "rope_theta", 10000.0)
        original(self, config, layer_idx)
        self.scaling = self.head_dim ** -0.5  # what 5.x's LlamaAttention.__init__ sets

    # monkey_patch_llama_with_axonn looks the function up at call time, so this takes effect.
    modify_llama.modified_attention_init = attention_init
    # 4.40 built rotary embeddings per attention module; 5.x builds them once per model.
    LlamaAttention._init_rope = lambda self: None


def patch() -> None:
    """Apply the CPU/gloo and transformers-5 patches (idempotent); call before using axonn."""
    global _PATCHED
    if _PATCHED:
        return
    from transformers.models.mixtral import modeling_mixtral

    if not hasattr(modeling_mixtral, "MixtralBlockSparseTop2MLP"):  # see item 6
        modeling_mixtral.MixtralBlockSparseTop2MLP = type(
            "MixtralBlockSparseTop2MLP", (torch.nn.Module,), {})
    import axonn.communication
    import axonn.intra_layer.asym_communication
    import axonn.intra_layer.communication
    import axonn.intra_layer.fully_connected
    import axonn.intra_layer.overlap_communication
    import axonn.models.transformers

    shim = _Torch()
    for module in (axonn.communication, axonn.intra_layer.asym_communication,
                   axonn.intra_layer.communication, axonn.intra_layer.fully_connected,
                   axonn.intra_layer.overlap_communication):
        module.torch = shim
    axonn.intra_layer.asym_communication.dist = shim.distributed
    axonn.intra_layer.overlap_communication.dist = shim.distributed
    _patch_llama_attention_init()
    _PATCHED = True


def init(data: int, z: int, y: int, x: int) -> None:
    """``ax.init`` on the axolab grid (data, z, y, x): G_data=data, G_intra_d=z, G_intra_r=y,
    G_intra_c=x (see axonn_compare.py for why this is the same rank layout)."""
    patch()
    from axonn import axonn as ax

    ax.init(G_inter=1, G_data=data, G_intra_r=y, G_intra_c=x, G_intra_d=z, gpus_per_node=1)
