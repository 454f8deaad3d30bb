#!/usr/bin/env bash
# The test command: install solo-sparse and its pinned dependencies from this checkout (and solo-learn at the
# pinned commit when it is missing and GitHub can be reached), lint, run the tests.
# Tests that need solo-learn skip with a reason when it is not importable.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt
rm -rf build   # setuptools reuses build/lib: a stale module from an older layout would be installed
python -m pip install -q --no-build-isolation .
python -m solo_sparse.tools.doctor --ensure-solo-learn || true
python -m ruff check .   # lint rules: ruff.toml
# run from tests/ so the installed package (not the source folder) is what gets imported
cd tests && exec python -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning -W ignore::FutureWarning "$@"
