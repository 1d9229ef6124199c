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


# The Pythia model card's exact parameter counts (EleutherAI/pythia-*, "Total params").
PYTHIA = {"pythia-70m": 70_426_624, "pythia-160m": 162_322_944, "pythia-410m": 405_334_016,
          "pythia-1b": 1_011_781_632, "pythia-1.4b": 1_414_647_808,
          "pythia-2.8b": 2_775_208_960, "pythia-6.9b": 6_857_302_016,
          "pythia-12b": 11_846_072_320}


def test_pythia_and_olmo2_presets_build_and_plan():
    """Each preset builds its transformers class on meta with the published size (Pythia), and
    the performance model's shapes count the same parameters as transformers."""
    from axolab.perfmodel import model_shapes
    from axolab.presets import PRESETS

    for name in [n for n in PRESETS if n.startswith(("pythia-", "olmo-2-"))]:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config(name))
        count = sum(p.numel() for p in model.parameters())
        if name in PYTHIA:
            assert count == PYTHIA[name], name
        assert model_shapes(name).params == count, name
        parallelize(model, Grid.init())
        assert all(p.is_meta for p in model.parameters())


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown model preset 'llama-4'.*llama-3.1-8b"):
        model_config("llama-4")
