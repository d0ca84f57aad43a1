"""Model zoo. Importing this package registers every model (with timm too)."""
from partialnet.models.registry import create_model, list_models, register_model

# Model files register their variants on import. Keep this list in sync with the files.
import importlib as _importlib

for _name in ("partialnet", "fasternet", "hosts"):
    try:
        _importlib.import_module(f"partialnet.models.{_name}")
    except ModuleNotFoundError as _e:  # a model file not written yet
        if _e.name != f"partialnet.models.{_name}":
            raise

__all__ = ["create_model", "list_models", "register_model"]
