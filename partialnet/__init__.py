"""partialnet: partial-channel networks (PartialNet, PATNet, FasterNet), DPConv search, training.

``import partialnet`` registers every model with timm, so ``timm.create_model('partialnet_t0')``
works afterwards.
"""
from partialnet.errors import UserError
from partialnet.models import create_model, list_models

__all__ = ["create_model", "list_models", "UserError"]
__version__ = "0.1.0"
