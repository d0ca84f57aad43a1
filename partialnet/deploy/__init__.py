"""Deploy form: structure-aware BN folding and PAT_sp merging (:func:`fuse`), ONNX export."""
from partialnet.deploy.fusion import fuse, is_fused, set_export_form, set_forward_type
from partialnet.deploy.onnx_export import export_onnx, onnx_max_abs_diff

__all__ = ["fuse", "is_fused", "set_forward_type", "set_export_form", "export_onnx", "onnx_max_abs_diff"]
