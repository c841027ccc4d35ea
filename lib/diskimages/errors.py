"""The project's exceptions: one base class, so a caller (the CLI, a notebook, a CI script) can tell what
diskimages refused or failed from a defect, and knows the exit code it stands for.

The two kinds below it keep the built-in classes as second bases, so code that catches ValueError (bad
input) or RuntimeError (failed work) from a library call keeps working."""
from __future__ import annotations


class DiskImagesError(Exception):
    """Anything diskimages refuses or fails on purpose, with a message meant for the user (one line that names
    the file, registry or field, and what is allowed)."""
    exit_code = 1


class InputError(DiskImagesError, ValueError):
    """Bad input: a recipe, an argument, a reference, a record or a response that is not what is allowed.
    Nothing was done; the command exits 2."""
    exit_code = 2


class Failure(DiskImagesError, RuntimeError):
    """Work that was started and could not be finished: a tool, a boot, a registry. The command exits 1."""
