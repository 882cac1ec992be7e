#!/usr/bin/env bash
# The checks that need a GPU, as one script: the CUDA tests, then benchmarks/gpu_throughput.py
# (bf16 peak, base/big step throughput and MFU against HF, attention kernels, end-to-end training
# on the Bible corpus against HF Seq2SeqTrainer, aiayn with compiled layers too), then translate_throughput.py on
# the GPU (greedy and beam 4 against HF generate, cuDNN attention on and off, bf16 too).
#
#   bash benchmarks/gpu_check.sh DATASET_DIR [OUT_DIR]
#
# Environment: TESTS=0 skips the CUDA tests, TRANSLATE=0 the decoding benchmark; PARTS, SIZES, MODES,
# E2E_VARIANTS pass on to gpu_throughput.py; TRANSLATE_ARGS replaces "--sentences 512 --batch-size 64";
# TEST_TIMEOUT, BENCH_TIMEOUT, TRANSLATE_TIMEOUT in seconds.
# DATASET_DIR: a prepared Bible dataset (aiayn prepare, BPE 8000). Uses the python3 on the PATH
# (a machine's own PyTorch with CUDA), with src/ on PYTHONPATH; installs nothing.
set -o pipefail
data=${1:?usage: gpu_check.sh DATASET_DIR [OUT_DIR]}
out=${2:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used,memory.total --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
if [ "${TESTS:-1}" = 1 ]; then
    timeout "${TEST_TIMEOUT:-200}" python3 -m pytest tests/test_cuda.py -q -s -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log"
fi
timeout "${BENCH_TIMEOUT:-360}" python3 benchmarks/gpu_throughput.py --dataset "$data" --parts "${PARTS:-peak,step,kernels,e2e}" ${E2E_VARIANTS:+--e2e-variants "$E2E_VARIANTS"} ${SIZES:+--sizes "$SIZES"} ${MODES:+--modes "$MODES"} \
    --out "$out/gpu_throughput.json" 2>&1 | tee "$out/gpu_throughput.log"
if [ "${TRANSLATE:-1}" = 1 ]; then
    timeout "${TRANSLATE_TIMEOUT:-180}" python3 benchmarks/translate_throughput.py --device cuda \
        ${TRANSLATE_ARGS:---sentences 512 --batch-size 64} --output "$out/translate_gpu.json" 2>&1 | tee "$out/translate_gpu.log"
fi
