"""What the Hydra callback runs before solo-learn's ``main``: :func:`install_from_config` validates
``cfg.solo_sparse``, registers backbone variants in ``BaseMethod._BACKBONES`` and replaces
``METHODS[cfg.method]`` **in place** (the scripts hold references to both dicts), or, for
``main_linear.py``, wraps the backbone builder so the backbone gets the plugin's buffers/gates and a
strict post-load check.
"""
from __future__ import annotations

from typing import List, Sequence

import solo.methods as _solo_methods
from solo.methods.base import BaseMethod

from solo_sparse.binding.wrap import check_plugins, unwrap, wrap
from solo_sparse.core.config import PREFIX, ConfigError
from solo_sparse.core.plugin import Plugin
from solo_sparse.core.registry import build_plugins


def _eval_builder(builder, plugins: Sequence[Plugin]):
    base = getattr(builder, "_ss_base_builder", builder)

    def build(*args, **kwargs):
        backbone = base(*args, **kwargs)
        for p in plugins:
            p.prepare_eval_backbone(backbone)
        return backbone

    build._ss_base_builder = base  # type: ignore[attr-defined]
    return build


def install_from_config(cfg) -> List[Plugin]:
    """Validate ``cfg.solo_sparse`` and patch solo-learn's registries in place for this job.

    Registers solo-sparse's extra methods (``rotnet``) first; with no plugin (``plugins: []``)
    that is all it does.
    """
    from solo_sparse.binding.methods import register_methods

    register_methods()
    plugins = build_plugins(cfg.get(PREFIX, None))
    if not plugins:
        method = cfg.get("method", None)
        if method and method not in _solo_methods.METHODS:
            raise ConfigError(f"method={method!r} is not a solo-learn method; "
                              f"available: {', '.join(_solo_methods.METHODS)}")
        return plugins
    for p in plugins:
        BaseMethod._BACKBONES.update(type(p).backbone_variants())
    method = cfg.get("method", None)
    if method:
        methods = _solo_methods.METHODS
        if method not in methods:
            raise ConfigError(f"method={method!r} is not a solo-learn method; available: {', '.join(methods)}")
        base = unwrap(methods[method])
        check_plugins(plugins, str(method), base, cfg.get("strategy", None))
        methods[method] = wrap(base)
    elif cfg.get("pretrained_feature_extractor", None) is not None:
        name = cfg.backbone.name
        if name not in BaseMethod._BACKBONES:
            raise ConfigError(f"backbone.name={name!r} is not registered; "
                              f"available: {', '.join(BaseMethod._BACKBONES)}")
        BaseMethod._BACKBONES[name] = _eval_builder(BaseMethod._BACKBONES[name], plugins)
    return plugins
