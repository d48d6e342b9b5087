#!/usr/bin/env bash
# bf16 training-step benchmark for an accelerator host (GPU or TPU): a ~1B-parameter
# decoder (GPT, 18 layers x 2048, 16 heads of 128, d_ff 8192, vocabulary 32,128) at
# sequence 2048, and T5-base (T5 1.1, 12 + 12 layers x 768, 512 in / 114 out, batch 128),
# each with MFU against the devices' published dense bf16 peak (t5x_lite/bench.py,
# PUBLISHED_BF16_PEAKS). Run from anywhere, with t5x_lite installed (make install, or
# jax[cuda12] / jax[tpu] in the environment PYTHON names; default .venv's, else python3):
#
#     benchmarks/device.sh                 # both models, 10 timed steps each
#     STEPS=5 BATCH_PER_DEVICE=4 benchmarks/device.sh
#     PEAK_TFLOPS=989 benchmarks/device.sh # a device the table lacks
#
# DEVICE_SMOKE=1 runs the same commands at toy shapes with a measured matmul peak, so the
# script can be checked on a CPU (tests/test_device_script.py does).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
STEPS=${STEPS:-10}
BATCH_PER_DEVICE=${BATCH_PER_DEVICE:-8}
DEVICES=$("$PYTHON" -c 'import jax; print(jax.device_count())')

if [ -n "${PEAK_TFLOPS:-}" ]; then
    PEAK=(--peak_tflops="$PEAK_TFLOPS")
elif [ -n "${DEVICE_SMOKE:-}" ]; then
    PEAK=()  # bench measures a matmul peak
else
    PEAK=(--published_peak)
fi

if [ -n "${DEVICE_SMOKE:-}" ]; then
    DECODER=(--config.model.d_model=64 --config.model.num_layers=1 --config.model.num_heads=2
             --config.model.head_dim=32 --config.model.d_ff=128 --config.objective.seq_len=64
             --config.tokenizer.vocab_size=512 --config.data.batch_size=2)
    T5=(--config.model.d_model=64 --config.model.num_encoder_layers=1
        --config.model.num_decoder_layers=1 --config.model.num_heads=2 --config.model.d_ff=128
        --config.objective.inputs_length=32 --config.objective.targets_length=8
        --config.tokenizer.vocab_size=512 --config.data.batch_size=2)
else
    DECODER=(--config.model.d_model=2048 --config.model.num_layers=18
             --config.model.num_heads=16 --config.model.head_dim=128 --config.model.d_ff=8192
             --config.objective.seq_len=2048 --config.tokenizer.vocab_size=32128
             --config.data.batch_size=$((BATCH_PER_DEVICE * DEVICES)))
    T5=(--config.data.batch_size=128)
fi

echo "== decoder, ~1B parameters, sequence 2048, bf16 (${DEVICES} devices) =="
"$PYTHON" -m t5x_lite.main bench --config=gin_configs/pretrain.py:gpt_small --steps="$STEPS" "${PEAK[@]}" \
    --config.model.dtype=bfloat16 "${DECODER[@]}"
echo "== T5-base (T5 1.1), 512 in / 114 out, bf16 =="
"$PYTHON" -m t5x_lite.main bench --config=gin_configs/pretrain.py:t5_base --steps="$STEPS" "${PEAK[@]}" \
    --config.model.dtype=bfloat16 "${T5[@]}"
