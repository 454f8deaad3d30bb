"""Everything a user runs: the CLI dispatch (``cli``), evaluation (``evaluate``), the benchmark harness
(``bench``), reports and plots (``report``), the IMP driver and its verbs, label re-training, the runner of
solo-learn's scripts, data preparation, the environment check (``doctor``), speed and epoch-time measurements.

Tools consume plugins only through the contract (:mod:`solo_sparse.core.plugin`, :mod:`solo_sparse.core.registry`,
:mod:`solo_sparse.core.events`): no plugin name, config key or family method appears here. solo-learn and
Lightning are imported lazily only (their trainers run in subprocesses).
"""
