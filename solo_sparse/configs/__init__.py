"""Hydra config group ``solo_sparse/`` (one YAML per plugin)."""
