#!/usr/bin/env bash
# The main job: MoCo v2+ dense vs gmp vs synccp (online density 0.1) on Fashion-MNIST, then kNN / linear-probe
# evaluation, a summary table and one PNG. It trains through solo-learn's unchanged main_pretrain.py where
# solo-learn is installed, else through the Lightning host (Lightly's building blocks + the Sparsify callback, the
# same suite YAML; results/local/<suite>-lightning), and says which; SOLO_SPARSE_HOST=solo-learn|lightning forces one.
#   bash scripts/main.sh           the full run: 5,000 images at 64 px, 12 epochs (about 35 min on 2 cores)
#   bash scripts/main.sh --quick   a first look: 1,000 images at 32 px, 2 epochs (2.5 min measured from a clean clone, solo-learn
#     present, 2 cores with nothing else training: trainings 23 / 25 / 31 s; 8.5 min beside another job)
#     (through the Lightning host, SOLO_SPARSE_HOST=lightning: 6.8 min from a clean clone, trainings 19 / 21 s on
#     idle cores and 3.2 min for the third once another job started beside it; 17 min from a fresh venv without
#     solo-learn at load average 7-9, install included)
# It installs solo-sparse, solo-learn at the pinned commit (when missing and GitHub can be reached) and the
# Debian package dataset-fashion-mnist (when apt-get can). With neither host it evaluates the model zoo instead.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1
python -m pip install -q -r requirements.txt
rm -rf build
python -m pip install -q --no-build-isolation ".[lightly]"
python -m solo_sparse.tools.doctor --ensure-solo-learn || true
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "dataset-fashion-mnist could not be installed with apt-get"
fi
if [ "$quick" = 1 ]; then
  data=fmnist1k; suite=main-quick
  [ -d data/$data/train ] || python scripts/prepare_fashion_mnist.py --out data/$data --train-per-class 100
else
  data=fmnist5k; suite=main
  [ -d data/$data/train ] || python scripts/prepare_fashion_mnist.py --out data/$data --train-per-class 500
fi
host=$(python -c "import solo_sparse.tools.runner as r; print(r.resolve_host('${SOLO_SPARSE_HOST:-auto}'))" \
  2>/dev/null | tail -n 1 || true)
if [ "$host" = solo-learn ]; then
  echo "host: solo-learn (its unchanged main_pretrain.py)"
  exec solo-sparse bench scripts/suites/$suite.yaml --data-root data --out results/local/$suite --host solo-learn
fi
if [ "$host" = lightning ]; then
  echo "host: lightning (solo-learn is not importable here, or SOLO_SPARSE_HOST asked for it): the same suite trains"
  echo "through Lightly's building blocks and the solo_sparse.lightning.Sparsify callback"
  exec solo-sparse bench scripts/suites/$suite.yaml --data-root data --out results/local/$suite-lightning \
    --host lightning
fi
echo "No SSL pre-training without solo-learn or Lightly: evaluating random-init backbones and the model zoo's pruned / gated"
echo "backbones on data/$data instead (solo-sparse doctor says what is missing)."
mkdir -p results/local/zoo
solo-sparse zoo verify
for e in $(solo-sparse zoo list --names); do
  solo-sparse zoo export "$e" --out "results/local/zoo/$e.ckpt" >/dev/null
done
solo-sparse evaluate --data data/$data results/local/zoo/*.ckpt --random-init-densities 1.0 \
  --out results/local/zoo_eval.json
solo-sparse report results/local/zoo_eval.json --out results/local   # this run's numbers, random-init line
