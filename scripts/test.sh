#!/usr/bin/env bash
# The test command: install solo-sparse and its pinned dependencies from this checkout (and solo-learn at the
# pinned commit when it is missing and GitHub can be reached), lint, run the tests.
#   bash scripts/test.sh            every test (those that need solo-learn skip with a reason where it is missing)
#   bash scripts/test.sh --fast     the solo-free fast subset only (-m "not solo and not slow"), a few minutes
# Extra arguments go to pytest. Where solo-learn is importable, the solo-free subset then runs again in a throwaway
# venv that cannot import it (scripts/solo_free.py): a machine with solo-learn installed by hand cannot hide a
# test that fails for a newcomer without it.
set -euo pipefail
cd "$(dirname "$0")/.."
FAST=0
if [ "${1:-}" = "--fast" ]; then FAST=1; shift; fi
python -m pip install -q -r requirements.txt
rm -rf build   # setuptools reuses build/lib: a stale module from an older layout would be installed
python -m pip install -q --no-build-isolation ".[lightly]"   # the Lightning host's tests need Lightly
python -m solo_sparse.tools.doctor --ensure-solo-learn || true
python -m ruff check .   # lint rules: ruff.toml
PYTEST=(python -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning -W ignore::FutureWarning)
if [ "$FAST" = 1 ]; then
  # run from tests/ so the installed package (not the source folder) is what gets imported
  (cd tests && "${PYTEST[@]}" -m "not solo and not slow" "$@")
  exit
fi
(cd tests && "${PYTEST[@]}" "$@")
if python -c "import solo" 2>/dev/null; then
  python scripts/solo_free.py
fi
