"""4D hybrid parallelism (data x Z x Y x X) for Hugging Face causal language models.

    from axolab.parallel import Grid, parallelize, sync_gradients, full_state_dict
    grid = Grid.init(data=2, z=1, y=2, x=2)
    model = parallelize(hf_model, grid)
    out = model(input_ids=grid.shard_batch(ids), labels=grid.shard_batch(labels, pad_value=-100))
    out.loss.backward(); sync_gradients(model); optimizer.step()
"""

from .grads import clip_grad_norm_, global_grad_norm, sync_gradients
from .grid import Axis, Grid
from .options import Optimizations
from .overlap import no_data_sync
from .modules import grid_of, parallel_modules, vocab_shard
from .parallelize import parallelize
from .plans import PLANS, Plan
from .state import full_state_dict, parallel_parameters
from .vocab import (VocabShard, gather_logits, vocab_parallel_argmax,
                    vocab_parallel_cross_entropy, vocab_parallel_logprobs)

__all__ = [
    "Axis", "Grid", "PLANS", "Plan", "VocabShard", "clip_grad_norm_", "full_state_dict",
    "Optimizations", "gather_logits", "global_grad_norm", "grid_of", "no_data_sync",
    "parallel_modules", "parallel_parameters", "parallelize",
    "sync_gradients", "vocab_parallel_argmax", "vocab_parallel_cross_entropy",
    "vocab_parallel_logprobs", "vocab_shard",
]
