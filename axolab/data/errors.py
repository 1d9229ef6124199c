"""The error every recipe and build problem raises (its own module, so the recipe, its YAML
reader and the build share it without importing one another)."""


class RecipeError(ValueError):
    """A recipe that cannot be built, with the field and the numbers at fault."""
