"""Everything a user runs, in rooms:

* the command line: ``cli`` (dispatch and short handlers; plugins add verbs through ``Plugin.commands``),
  ``inputs`` (argument types, checkpoint and config reading);
* evaluation: ``evaluate`` (kNN and linear probe of a backbone, MACs), ``retrain`` (label re-training of a mask);
* the benchmark harness: ``bench/`` (``suite`` file and runs, ``harness`` that trains and evaluates rows,
  ``rounds`` of IMP with their controls, ``measure`` of a checkpoint, ``results`` tables, plots and doc blocks),
  ``stats`` (paired statistics and claim verdicts);
* IMP: ``imp/`` (the round driver over ``main_pretrain.py`` and the verbs ``imp``, ``permute-masks``, ``retrain``);
* measurements and reports: ``report`` (plots of runs, evaluations and the zoo), ``speed`` and ``zoo_bench``
  (latency of the fast paths), ``epoch_time``;
* around the hosts: ``runner`` (solo-learn's scripts and the Lightning trainer in subprocesses), ``data`` (image
  folders), ``doctor`` (the environment check).

Tools consume plugins only through the contract (:mod:`solo_sparse.core.plugin`, :mod:`solo_sparse.core.registry`,
:mod:`solo_sparse.core.events`): no plugin name, config key or family method appears here. solo-learn and
Lightning are imported lazily only (their trainers run in subprocesses).
"""
