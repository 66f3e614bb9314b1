#!/usr/bin/env bash
# The Python packages landseg needs that the lent GPU machine's image lacks, as wheels in .whl/
# (ignored by git) for benchmarks/gpu_session.sh. Run here, in the repository root, where the
# package registries are reachable; the GPU machine reaches nothing. Its image has Python 3.12
# with torch, Lightning, torchmetrics, timm, rich, matplotlib, tensorboard and PyYAML; the
# versions below are this project's lock (about 37 MB, under the 64 MiB a device call carries).
set -euo pipefail
cd "$(dirname "$0")/.."
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl \
    segmentation-models-pytorch==0.6.0 rasterio==1.4.4 affine==3.0.1 cligj==0.7.2 \
    click-plugins==1.1.1.2 pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 \
    typing-inspection==0.4.5
du -sh .whl
