"""Gated modules: CGNet/CDG channel-gated convolutions (``cgnet``, executed forms in ``cdg_exec``), FBS
convolutions and blocks (``fbs``), what the channel gates share (``channel``), DGNet channel gates and gated
blocks (``dgnet``).

Modules only, no training policy: imports ``core`` and ``engine``; the families decide when and how they train.
"""
