"""solo-sparse: sparse, gated and cheaper self-supervised learning as plugins for solo-learn.

``import solo_sparse`` never imports solo-learn; the binding (``solo_sparse.binding.wrap``) does, and only
when a config or :func:`wrap` asks for a plugin.
"""
from __future__ import annotations

__version__ = "0.1.0"

from solo_sparse.core.config import ConfigError, MaskSpec, ScheduleSpec, StepSpec
from solo_sparse.core.registry import available_plugins, describe_plugins, get_plugin, register_plugin


def wrap(method_cls, plugin=None, **params):
    """``solo_sparse.wrap(BYOL, "gmp", final_density=0.1)``: a solo-learn method driven by a plugin."""
    from solo_sparse.binding.wrap import wrap as _wrap

    return _wrap(method_cls, plugin, **params)


__all__ = [
    "ConfigError", "MaskSpec", "ScheduleSpec", "StepSpec", "available_plugins", "describe_plugins",
    "get_plugin", "register_plugin", "wrap", "__version__",
]
