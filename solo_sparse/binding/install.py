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
from solo_sparse.core.registry import HOST_KEYS, build_plugins


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
        plugins = plugins_as_trained(plugins, cfg.get(PREFIX, None), str(cfg.pretrained_feature_extractor))
        BaseMethod._BACKBONES[name] = _eval_builder(BaseMethod._BACKBONES[name], plugins)
    return plugins


def plugins_as_trained(plugins: Sequence[Plugin], section, ckpt_path: str) -> List[Plugin]:
    """``main_linear.py``: each plugin rebuilt from the config its pre-training checkpoint records (stages,
    groups, cg, norm, scales, ...), so the one ``- solo_sparse: <plugin>`` line is enough; a key the linear
    config sets to another value than pre-training did is refused naming both, except the plugin's
    ``evaluation_keys`` (which path to evaluate), which the linear config chooses. Plugins the checkpoint holds
    no state for keep the line's config."""
    import torch

    from solo_sparse.core.config import _to_plain, config_to_state

    try:
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - main_linear.py reports an unreadable checkpoint itself
        return list(plugins)
    saved_all = ck.get("solo_sparse") or {} if isinstance(ck, dict) else {}
    section = dict(_to_plain(section) or {})
    out = []
    for p in plugins:
        saved = saved_all.get(p.name)
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            out.append(p)
            continue
        cls = type(p)
        mine = section.get(p.name) if len(plugins) > 1 else section
        explicit = {k: v for k, v in dict(mine or {}).items() if k not in ("plugin", "plugins", *HOST_KEYS)}
        from_saved = cls.from_saved
        chosen = {k: v for k, v in explicit.items() if k in cls.evaluation_keys}   # the linear run's to choose
        trained = from_saved({**saved["config"], **chosen})
        if explicit:
            asked = config_to_state(from_saved({**saved["config"], **explicit}).config)
            was = config_to_state(trained.config)
            diff = [k for k in explicit if asked.get(k) != was.get(k)]
            if diff:
                k = diff[0]
                raise ConfigError(f"{PREFIX}.{k}={asked.get(k)!r} in the linear config, but {ckpt_path} was "
                                  f"pre-trained with {PREFIX}.{k}={was.get(k)!r}: the backbone is rebuilt as "
                                  f"trained; drop the override (the '- solo_sparse: {p.name}' line is enough)")
        out.append(trained)
    return out
