"""solo-sparse's algorithm plugins (installed as ``solo_sparse_plugins``), one file per algorithm.

Each file holds a config dataclass (validated on construction) and a :class:`solo_sparse.core.plugin.Plugin`
subclass that composes the engine in ``solo_sparse``. They are found through the entry-point group
``solo_sparse.plugins`` (see setup.py).
"""
