"""Plugin base classes that compose ``engine`` and ``gating`` into training policies: weight sparsity
(``weight``), prune-and-regrow with the contrastive sparsification indicator (``dynamic``), every plugin that
rewrites the backbone (``gating``), channel gating (``channel_gating``), DGNet (``dgnet``).

A plugin in ``plugins/`` subclasses one family and sets its policy in a few lines; what a family exposes to the
rest of the library goes through the :class:`~solo_sparse.core.plugin.Plugin` contract only.
"""
