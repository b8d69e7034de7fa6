#!/usr/bin/env bash
# Fetch, here, the wheels that benchmarks/gpu_check.sh installs on the GPU machine (whose image has torch, SciPy,
# scikit-image, scikit-learn, safetensors and Pillow, but not these), at the versions requirements.txt pins, for its
# Python 3.12 on x86-64. They go to .whl/ (ignored by git; carried to the GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
for name in monai faiss-cpu nibabel pydicom pytorch-metric-learning; do
    pin=$(grep -i "^${name}==" requirements.txt)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$pin"
done
du -sh .whl
