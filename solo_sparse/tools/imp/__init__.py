"""Iterative magnitude pruning with self-supervision, the tools' side of the ``imp`` plugin: the round driver over
solo-learn's unchanged ``main_pretrain.py`` (:mod:`.driver`, ``solo-sparse imp``) and the command-line verbs the
plugin contributes through :meth:`~solo_sparse.core.plugin.Plugin.commands` (:mod:`.verbs`: ``imp``,
``permute-masks``, ``retrain``). The benchmark's ``kind: rounds`` runs drive the same rounds
(:mod:`solo_sparse.tools.bench.rounds`); label re-training of a mask is :mod:`solo_sparse.tools.retrain`.

Nothing is imported here: the CLI builds its parser from every plugin's verbs, so importing the verbs stays cheap.
"""
