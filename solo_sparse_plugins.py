"""A pointer for setuptools' ``compat`` editable mode only.

setup.py installs the ``plugins/`` folder as the package ``solo_sparse_plugins``. Regular installs copy it
under that name, and setuptools' default and strict editable modes map the name to the folder; the
compat mode only puts this repository's root on ``sys.path``, where this module is found instead and makes
the folder the package's search path, so ``import solo_sparse_plugins.gmp`` loads ``plugins/gmp.py``.
It is not part of any installed distribution.
"""
import os

__path__ = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "plugins")]
