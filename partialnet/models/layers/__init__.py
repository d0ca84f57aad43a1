"""Building blocks. Split blocks take ``[X_p | X_u]`` with the conv part first."""
from partialnet.models.layers.bn_gelu import batch_norm_gelu
from partialnet.models.layers.dense_activation import dense_activation
from partialnet.models.layers.pat import PATChannel, PATSpatial, StatsBatchNorm2d
from partialnet.models.layers.pat_self import PATSelf, heads_for
from partialnet.models.layers.pconv import PartialConv, PartialSplit, conv_channels, writes_in_place
from partialnet.models.layers.pointwise_conv import PointwiseConv2d, is_pointwise
from partialnet.models.layers.rpe import EuclideanRPE, euclidean_bucket_index
from partialnet.models.layers.srm_stats import srm_statistics
from partialnet.models.layers.acmix import ACmix
from partialnet.models.layers.scconv import SCConv

__all__ = [
    "PartialSplit",
    "PartialConv",
    "writes_in_place",
    "PointwiseConv2d",
    "PATChannel",
    "PATSpatial",
    "PATSelf",
    "SCConv",
    "ACmix",
    "StatsBatchNorm2d",
    "EuclideanRPE",
    "batch_norm_gelu",
    "conv_channels",
    "dense_activation",
    "euclidean_bucket_index",
    "heads_for",
    "is_pointwise",
    "srm_statistics",
]
