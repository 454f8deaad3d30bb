"""The Lightning binding: solo-sparse's plugins on any Lightning SSL module (Lightly's first), one callback line::

    from solo_sparse.lightning import Sparsify

    trainer = pl.Trainer(max_epochs=100, callbacks=[Sparsify("synccp", final_density=0.1)])
    trainer.fit(MoCo(), dataloader)

:class:`Sparsify` (``callback.py``) finds the module's backbone (and momentum backbone), builds the same
:class:`~solo_sparse.core.plugin.ModelView` the solo-learn binding builds, and calls the plugin hooks at the same
points of the step; checkpoints carry the same ``solo_sparse`` state (:mod:`solo_sparse.core.checkpoint`), so a
run evaluates, exports to the zoo and resumes like a solo-learn one. ``train.py`` trains a solo-learn YAML
config (MoCo v2+, BYOL, SimCLR) through Lightly's building blocks and this callback: the main job's path where
solo-learn is missing. This package is the only one that imports Lightly; it never imports solo-learn.
"""
from __future__ import annotations

from solo_sparse.lightning.callback import CROP_ORDERS, Sparsify, crop

__all__ = ["CROP_ORDERS", "Sparsify", "crop"]
