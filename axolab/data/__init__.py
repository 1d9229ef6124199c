"""Memorization datasets: corpora, tokenizers, canary injection, packing and manifests."""

from .build import build
from .canaries import Canary
from .manifest import canary_table, load_canaries
from .recipe import Recipe, RecipeError, load_recipe, recipe_from_dict

__all__ = ["Canary", "Recipe", "RecipeError", "build", "canary_table", "load_canaries", "load_recipe",
           "recipe_from_dict"]
