"""Model zoo. Importing this package registers every model (with timm too)."""
from partialnet.models import fasternet, hosts, partialnet  # noqa: F401  (registration on import)
from partialnet.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
