"""disk-images cookbook: build, boot-test, compare and publish desktop Linux disk images from one recipe."""
from .recipe import Recipe, RecipeError, load_recipe, list_recipe_names

__all__ = ["Recipe", "RecipeError", "load_recipe", "list_recipe_names"]
__version__ = "0.1.0"
