"""The contract every other layer is written against, and nothing else: config validation (``ConfigError``,
``StepSpec``, ``MaskSpec``), the :class:`~solo_sparse.core.plugin.Plugin` base class with its capabilities and
hooks and the :class:`~solo_sparse.core.plugin.PluginHost` that drives them, the registry (entry points,
capability queries, checkpoint → plugin), the checkpoint format every host writes, the structured events plugins
emit (:mod:`~solo_sparse.core.events`), and atomic file writing.

Imports no other solo_sparse layer and never solo-learn, Lightning or Hydra: a consumer (a tool, a binding, the
zoo) asks a plugin a question only through what is defined here.
"""
