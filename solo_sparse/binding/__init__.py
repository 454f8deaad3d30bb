"""The solo-learn binding — the only package of solo-sparse that imports ``solo`` at module level (tools
import it lazily, to find and run its scripts).

``wrap`` (a method class driven by plugins), ``install`` (what the Hydra callback patches in
solo-learn's registries), ``hydra_callback``, ``methods`` (RotNet), ``objectives`` (the methods'
losses at any depth, for ``interloss``; importable without solo-learn, which its functions import), ``groups`` (the
config-group entry generated for a plugin installed without a YAML), ``guard`` (the checks that keep a ``solo_sparse:``
section or a plugin's checkpoint from being ignored silently).
Importing this package itself imports nothing from solo-learn. ``host`` is what both hosts share (checkpoint and
random state, checks before step 0, schedule length, optimizer groups, metric queue) and imports neither solo-learn
nor Lightning; the Lightning binding is :mod:`solo_sparse.lightning`.
"""
