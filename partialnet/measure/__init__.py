"""Measurement: params/MACs counting (MACs = the papers' "FLOPs"), speed (:mod:`.speed`), inference runtimes (:mod:`.runtimes`)."""
from partialnet.measure.count import count, format_counts

__all__ = ["count", "format_counts"]
