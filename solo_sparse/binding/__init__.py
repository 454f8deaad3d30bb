"""The solo-learn binding — the only package of solo-sparse that imports ``solo`` (and Lightning).

``wrap`` (a method class driven by plugins), ``install`` (what the Hydra callback patches in
solo-learn's registries), ``hydra_callback``, ``methods`` (RotNet), ``objectives`` (the methods'
losses at any depth, for ``interloss``; importable without solo-learn, which its functions import).
Importing this package itself imports nothing from solo-learn.
"""
