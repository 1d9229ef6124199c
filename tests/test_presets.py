"""Model presets: parameter counts against the published Llama 3.1 sizes, built on meta."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from axolab.parallel import Grid, parallelize
from axolab.presets import model_config

# Published totals (Meta's model cards round them to 8B / 70B / 405B).
PUBLISHED = {"llama-3.1-8b": 8_030_261_248, "llama-3.1-70b": 70_553_706_496,
             "llama-3.1-405b": 405_853_388_800}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_llama_31_presets_have_the_published_size(name):
    config = model_config(name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[name]
    assert config.rope_parameters["rope_type"] == "llama3"
    parallelize(model, Grid.init())  # the meta path allocates nothing, even for 405B
    assert all(p.is_meta for p in model.parameters())


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown model preset 'llama-4'.*llama-3.1-8b"):
        model_config("llama-4")
