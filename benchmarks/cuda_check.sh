#!/usr/bin/env bash
# The checks that need a CUDA machine, in one go: train both experiments on CUDA with tracking,
# run the tests marked `cuda`, then the whole suite and the CPU benchmark on that (quieter) box.
# Run from the repository root with knightctl's dependencies importable. Never part of CI.
set -uo pipefail
out=${OUT:-$(mktemp -d)}
work=$(mktemp -d)
root=$(pwd)
python3 -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0))"
(cd "$work" && python3 -m knightctl train "$root/experiments/round_table.yaml" --device cuda) 2>&1 | tee "$out/round_table_cuda.txt"
(cd "$work" && python3 -m knightctl train "$root/experiments/mordred.yaml" --device cuda) 2>&1 | tee "$out/mordred_cuda.txt"
python3 -m pytest -m cuda -q -p no:cacheprovider tests 2>&1 | tee "$out/pytest_cuda.txt"
python3 benchmarks/train_overhead.py --no-track --pairs 10 --steps 2000 2>&1 | grep -v INFO | tee "$out/train_overhead.txt"
python3 -m pytest -q -p no:cacheprovider -x tests 2>&1 | tail -15 | tee "$out/pytest_all.txt"
