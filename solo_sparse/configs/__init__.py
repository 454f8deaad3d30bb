"""The Hydra config group ``solo_sparse/`` (one YAML per plugin; each only names its plugin and the callback),
put on every Hydra app's search path by ``hydra_plugins.solo_sparse_searchpath``."""
