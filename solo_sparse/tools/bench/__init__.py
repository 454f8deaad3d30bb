"""``solo-sparse bench SUITE.yaml``: the one benchmark harness, in rooms: the suite file and its runs
(:mod:`.suite`), what a row measures from a trained checkpoint (:mod:`.measure`), the harness that trains and
evaluates rows (:mod:`.harness`; IMP rounds and their controls: :mod:`.rounds`), and the tables, plots and doc
blocks made from the rows (:mod:`.results`, paired statistics from :mod:`solo_sparse.tools.stats`).

A suite is data (``scripts/suites/*.yaml``)::

    suite: synccp                      # results go to results/<suite>/ unless --out
    description: BYOL dense vs ...     # one line for the tables
    data: fmnist5k                     # image folder under --data-root (train/ val/), made by
                                       # scripts/prepare_fashion_mnist.py; its meta.json is recorded
    size: 64                           # evaluation images, pixels (the training crop is the config's
                                       # augmentation file: set it in overrides, e.g. augmentations=grey64.yaml)
    seeds: 3                           # seeds 0..n-1 (``--seeds`` overrides)
    overrides: ["max_epochs=15"]       # Hydra overrides of every run
    random_init: true                  # a random-init row per seed (the floor every table needs)
    window: {start: "10%", end: "75%"} # one pruning window for every sparse run (each plugin says which of its
                                       # keys set it; a run contradicting it is refused)
    runs:
      - id: dense
        config: scripts/configs/fmnist/byol.yaml
      - id: synccp
        config: scripts/configs/fmnist/byol_synccp10.yaml
        overrides: ["++solo_sparse.momentum_mask=own"]
        eval_paths: [gated, dense]     # backbone-rewriting plugins: one row per evaluation path
        seeds: 1                       # at most one seed for this run
      - id: imp
        kind: rounds                   # IMP rounds (``solo-sparse imp``) + the controls (Bench.run_imp)
        plugin: imp                    # the fixed-mask plugin the rounds train with
        config: scripts/configs/fmnist/mocov2plus_imp.yaml
        rounds: 5
        rate: 0.2
        controls: [global_random, layer_permutation]
        control_rounds: [1, 2, 3, 4, 5]
        retrain_epochs: 12             # label re-training rows beside the linear-probe rows

Every run trains through solo-learn's unchanged ``main_pretrain.py`` (``solo_sparse.tools.runner``),
then the final checkpoint's online backbone is evaluated on the val split: weighted kNN (k=20, k=1) and
a linear probe on frozen features (``solo_sparse.tools.evaluate``). One row schema for every suite
(:data:`~solo_sparse.tools.bench.results.ROW_KEYS`). Rows are keyed ``<id>/seed<k>``; a row whose fingerprint
(config file content + overrides + seed + size) is already in ``results.json`` is skipped, a trained run whose
evaluation is missing is only evaluated — re-running a suite after an interruption continues where it stopped.
A finished row whose cost columns were measured with an older cost count of one of its plugins (the row's
``cost_versions`` vs :attr:`~solo_sparse.core.plugin.Plugin.cost_version`) is re-measured from its checkpoint,
its accuracy kept.

Outputs in the suite's folder: ``results.json`` (rows + meta), ``results.md`` (mean ± std over seeds per
id, with the random-init and dense margins), ``<suite>.png`` (linear probe vs inference MACs, error bars,
random-init and dense lines; rows of ``kind: rounds`` runs left out), ``<suite>-rounds.png`` where the suite has
``kind: rounds`` runs (top-1 vs density of the IMP tickets and their controls, one panel per evaluation:
:func:`~solo_sparse.tools.bench.results.plot_rounds`), ``<suite>-claims.png`` where it declares difference claims
(a forest plot of their paired differences, intervals and margins: :func:`~solo_sparse.tools.bench.results.plot_claims`;
``--update-docs`` redraws it with the claims the suite file declares now; both plots keep the digest of the data
they show and ``--update-docs`` redraws them only when it changed), ``monitor.png`` (the collapse / momentum
monitor).
No machine path is written: configs are repository-relative, data is named by its folder, commands use
``<repo>``, ``<solo-learn>``, ``<data>`` and ``<out>`` placeholders.
"""
from solo_sparse.tools.bench.harness import Bench
from solo_sparse.tools.bench.measure import checkpoint_stats, probe_stats
from solo_sparse.tools.bench.results import (
    ROW_KEYS,
    aggregate,
    dense_of,
    plot,
    plot_monitors,
    regime_markdown,
    to_markdown,
    update_docs,
    versus,
    versus_dense,
)
from solo_sparse.tools.bench.suite import (
    CONTROLS,
    KINDS,
    RUN_KEYS,
    SUITE_KEYS,
    RunSpec,
    Suite,
    compose_plugins,
    plugin_digest,
    suite_root,
)

__all__ = ["Bench", "CONTROLS", "KINDS", "ROW_KEYS", "RUN_KEYS", "SUITE_KEYS", "RunSpec", "Suite", "aggregate",
           "checkpoint_stats", "compose_plugins", "dense_of", "plot", "plot_monitors", "plugin_digest", "probe_stats",
           "regime_markdown", "suite_root", "to_markdown", "update_docs", "versus", "versus_dense"]
