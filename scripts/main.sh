#!/usr/bin/env bash
# The main job: sparse BYOL pre-training through solo-learn's unchanged main_pretrain.py on a
# Fashion-MNIST subset (dense vs gmp at density 0.5 and 0.1), then kNN / linear-probe evaluation.
# About 30 min on 2 CPU cores. Without solo-learn it evaluates magnitude-pruned backbones and the model
# zoo's pruned / gated backbones instead (and benchmarks a compact export), and says how to get the full path.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt
python -m pip install -q --no-build-isolation .
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) || true
fi
python scripts/prepare_fashion_mnist.py --out data/fmnist5k --train-per-class 500
if python -c "import solo" 2>/dev/null; then
  python scripts/benchmark.py --data data/fmnist5k --out results/local \
    --configs scripts/configs/fmnist/byol.yaml scripts/configs/fmnist/byol_gmp50.yaml scripts/configs/fmnist/byol_gmp10.yaml
else
  cat <<'MSG'
solo-learn is not installed, so no SSL pre-training runs here. To get the full path:
  git clone https://github.com/vturrisi/solo-learn && pip install --no-build-isolation --no-deps -e solo-learn
  (its own requirements are already installed by requirements.txt), then run this script again.
Meanwhile: evaluating random-init ResNet-18 backbones magnitude-pruned to 1.0 / 0.5 / 0.1 density.
MSG
  mkdir -p results/local/zoo
  solo-sparse evaluate --data data/fmnist5k --random-init-densities 1.0 0.5 0.1 --out results/local/no_solo_eval.json
  echo "Model zoo: verifying every entry, then evaluating the pruned / gated backbones it ships."
  solo-sparse zoo list
  solo-sparse zoo verify
  for e in $(solo-sparse zoo list --names); do
    solo-sparse zoo export "$e" --out "results/local/zoo/$e.ckpt"
  done
  solo-sparse evaluate --data data/fmnist5k results/local/zoo/*.ckpt --out results/local/zoo_eval.json
  solo-sparse zoo bench resnet18-fmnist5k-mocov2plus-imp-ticket-d09 --channel-density 0.5 --reps 10 \
    --out results/local/zoo_compact_bench.json
fi
