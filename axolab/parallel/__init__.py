"""4D hybrid parallelism (data x Z x Y x X) for Hugging Face causal language models.

    from axolab.parallel import Grid, parallelize, sync_gradients, full_state_dict
    grid = Grid.init(data=2, z=1, y=2, x=2)
    model = parallelize(hf_model, grid)
    out = model(input_ids=grid.shard_batch(ids), labels=grid.shard_batch(labels, pad_value=-100))
    out.loss.backward(); sync_gradients(model); optimizer.step()
"""

from .grads import clip_grad_norm_, global_grad_norm, no_data_sync, sync_gradients
from .grid import Axis, Grid
from .modules import grid_of, parallel_modules, vocab_shard
from ..optimizations import Optimizations
from .parallel_state import ParallelState, find_parallel_state, parallel_state
from .parallelize import parallelize
from .plans import PLANS, Plan
from .styles import STYLES, Style
from .state_dict import full_state_dict, parallel_parameters
from .vocab import (VocabShard, gather_logits, vocab_parallel_argmax,
                    vocab_parallel_cross_entropy, vocab_parallel_logprobs)

__all__ = [
    "Axis", "Grid", "Optimizations", "PLANS", "ParallelState", "Plan", "STYLES", "Style",
    "VocabShard", "clip_grad_norm_", "find_parallel_state", "full_state_dict", "gather_logits",
    "global_grad_norm", "grid_of", "no_data_sync", "parallel_modules", "parallel_parameters",
    "parallel_state", "parallelize", "sync_gradients", "vocab_parallel_argmax",
    "vocab_parallel_cross_entropy", "vocab_parallel_logprobs", "vocab_shard",
]
