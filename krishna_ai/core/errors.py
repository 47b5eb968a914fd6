"""Domain errors. Loaders raise these; only the edges (CLI, Gradio) turn them into exits or gr.Error."""

from __future__ import annotations


class KrishnaError(Exception):
    """Base class for every error this package raises on purpose."""


class PersonaError(KrishnaError):
    """A persona file is missing, malformed, or fails validation."""


class ModelUnavailable(KrishnaError):
    """A model could not be found or loaded; the message says what was tried and what to do."""


class ImageError(KrishnaError):
    """An uploaded image was rejected (unreadable, too large, wrong kind...)."""


class InputError(KrishnaError):
    """A chat message (or request) that cannot be answered as given: empty, too long..."""


class GenerationError(KrishnaError):
    """Generation failed inside the model thread, or the request cannot be generated."""


class ConfigError(KrishnaError):
    """A recipe, slice config or command-line option is invalid."""


class DataError(KrishnaError):
    """A dataset file has bad lines; the message lists every one with its line number."""


def problems(title: str, items: list[str]) -> str:
    """Format several problems as one message: a title line, then one bullet per problem."""
    return title + "\n" + "\n".join(f"  - {item}" for item in items)
