"""C++ CPU kernels that PyTorch's own operators cannot express in one pass.

``bn_gelu.cpp``: training-mode BatchNorm + exact GELU fused on a channels_last map (used by the
MLP of every block, :mod:`partialnet.models.layers.bn_gelu`); ``pat_spatial.cpp``: PAT_sp's
training passes (:mod:`partialnet.models.layers.pat_spatial_tokens`); ``one_image.cpp``: steps of
the fused modules' one-image forms at inference (PAT_ch's gate and the fc1 rows it scales, PAT_sp's
attention half; :mod:`partialnet.deploy.fusion`), one call each where operators need several; ``vec_common.h``: their
shared checks and column sums; ``bindings.cpp``: the Python module. The sources are compiled with
``torch.utils.cpp_extension`` (a C++ compiler and ninja) by ``make install``, or by hand with
``python -m partialnet.kernels``; the build lands in a per-torch-version, per-source directory
under ``$PARTIALNET_KERNELS_DIR`` (default ``~/.cache/partialnet/kernels``). At run time
:func:`cpu_kernels` only loads a finished build and never compiles: without one (or on a CPU
without AVX2) every caller runs PyTorch's operators instead, with the same results.
"""
from partialnet.kernels.loader import build, build_dir, cpu_kernels

__all__ = ["build", "build_dir", "cpu_kernels"]
