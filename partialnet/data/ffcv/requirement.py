"""Is FFCV usable here? :func:`require_ffcv` imports it or raises a one-line :class:`UserError`."""
from __future__ import annotations

from partialnet.errors import UserError

INSTALL_HINT = (
    "run `bash scripts/install_ffcv.sh` (needs pkg-config, libopencv-dev, libturbojpeg0-dev, a C++ compiler), "
    "or use the ImageFolder pipeline instead: data=imagenet_folder"
)


def require_ffcv():
    """Import and return the ``ffcv`` package, or raise a one-line :class:`UserError`."""
    try:
        import ffcv
        import ffcv.fields.decoders  # noqa: F401  (loads numba, OpenCV and the C extension)
        import ffcv.loader  # noqa: F401
        import ffcv.transforms  # noqa: F401
        import ffcv.writer  # noqa: F401
    except (ImportError, OSError) as e:  # OSError: the C extension's shared libraries are missing
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"FFCV is not usable ({reason}): {INSTALL_HINT}") from None
    from partialnet.data.ffcv.internals import warn_if_other_version

    warn_if_other_version()
    return ffcv
