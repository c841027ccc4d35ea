"""disk-images cookbook: build, boot-test, compare and publish desktop Linux disk images from one recipe."""
from .recipe import Recipe, RecipeError, list_recipe_names

__all__ = ["Recipe", "RecipeError", "load_recipe", "list_recipe_names"]
__version__ = "0.1.0"


def load_recipe(name_or_path) -> Recipe:
    """A recipe by name (under recipes/) or path, checked against its distribution and the tools it names."""
    from .tools import load_checked
    return load_checked(name_or_path)
