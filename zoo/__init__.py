"""The solo-sparse model zoo's files (``manifest.json``, ``weights/``, ``configs/``), installed with
the package as ``solo_sparse_zoo`` so that ``solo_sparse.zoo`` finds them outside a checkout."""
