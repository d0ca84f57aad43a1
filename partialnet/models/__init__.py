"""Model zoo. Importing this package registers every model (with timm too)."""
from partialnet.models import fasternet, hosts, partialnet  # noqa: F401  (registration on import)
from partialnet.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model", "load_pretrained"]


def __getattr__(name: str):
    # imported on first use, so that ``python -m partialnet.models.convert`` runs a fresh module
    if name == "load_pretrained":
        from partialnet.models.convert import load_pretrained

        return load_pretrained
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
