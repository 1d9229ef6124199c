"""Model presets: parameter counts against the published sizes, built on meta."""

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


# Published totals of GPT-2 (embeddings included, the tied head counted once), Phi-3-mini,
# Gemma-2-2B and Gemma-3-1B.
PUBLISHED_OTHERS = {"gpt2": 124_439_808, "gpt2-medium": 354_823_168,
                    "gpt2-large": 774_030_080, "gpt2-xl": 1_557_611_200,
                    "phi-3-mini": 3_821_079_552, "gemma-2-2b": 2_614_341_888,
                    "gemma-3-1b": 999_885_952}


# Published only rounded: Qwen3-0.6B's model card gives 0.6B parameters, 0.44B of them outside
# the embedding; the OLMo-2 model cards give (layers, hidden size, heads, context length).
QWEN3_CARD = {"qwen3-0.6b": (0.6, 0.44)}
OLMO2_CARD = {"olmo-2-1b": (16, 2048, 16, 4096), "olmo-2-7b": (32, 4096, 32, 4096),
              "olmo-2-13b": (40, 5120, 40, 4096)}


def test_other_architecture_presets_build_and_plan():
    """Each preset builds its transformers class on meta with the published size, and the
    performance model's shapes count the same parameters as transformers."""
    from axolab.perfmodel import model_shapes
    from axolab.presets import PRESETS

    published = {**PYTHIA, **PUBLISHED_OTHERS}
    for name in [n for n in PRESETS if n.startswith(("pythia-", "olmo-2-", "gpt2", "phi-3", "qwen3-", "gemma-"))]:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config(name))
        count = sum(p.numel() for p in model.parameters())
        config = model.config
        assert name in published or name in QWEN3_CARD or name in OLMO2_CARD, \
            f"{name}: no published figure to check it against"
        if name in published:
            assert count == published[name], name
        if name in QWEN3_CARD:
            outside = count - model.get_input_embeddings().weight.numel()
            assert (round(count / 1e9, 1), round(outside / 1e9, 2)) == QWEN3_CARD[name], name
        if name in OLMO2_CARD:
            assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                    config.max_position_embeddings) == OLMO2_CARD[name], name
        assert model_shapes(name).params == count, name
        parallelize(model, Grid.init())
        assert all(p.is_meta for p in model.parameters())


def test_unknown_preset_is_named():
    with pytest.raises(ValueError, match="unknown model preset 'llama-4'.*llama-3.1-8b"):
        model_config("llama-4")
