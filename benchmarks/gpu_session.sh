#!/usr/bin/env bash
# One prepared session on a lent GPU machine (issue 14): the GPU tests, then bench_gpu.
#
# Here, once:   benchmarks/gpu_wheels.sh
# Then, with the device tool:
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=590)
# and give the machine back. Results come back in $OUT: machine.txt, gpu_tests.txt,
# bench_gpu.txt (the JSON to write into benchmarks/README.md section 5).
#
# Budget (15 device minutes a session, a machine's start included): the tests take about
# 3 minutes on the GPU, bench_gpu about 4; each has its own timeout so that one stuck step
# leaves time for the other, and the whole fits one call with room for a rerun.
set -uo pipefail
OUT=${OUT:-/tmp/landseg-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 3
# landseg from the working tree (not installed: the image's torch is older than the
# project's pin, and nothing can be fetched there to satisfy it)
export PYTHONPATH="/tmp/site:$PWD/src:$PWD" PYTHONUNBUFFERED=1
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import torch, lightning; print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'lightning', lightning.__version__)"
    nproc
} 2>&1 | tee "$OUT/machine.txt"
# the GPU tests, and the resume tests with the demo config on the GPU
LANDSEG_TEST_ACCELERATOR=gpu timeout 300 python3 -m pytest -q -p no:cacheprovider -x \
    tests/gpu tests/training/test_resume.py -k "gpu or sigkill" 2>&1 |
    tee "$OUT/gpu_tests.txt"
timeout 330 python3 -m benchmarks.bench_gpu --tiles 128 --val 16 --size 512 \
    --batch-size 16 --epochs 4 --workers 8 2>&1 | tee "$OUT/bench_gpu.txt"
