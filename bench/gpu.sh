#!/usr/bin/env bash
# One call on a GPU machine: CUDA runtime benchmark + a live server on CUDA.
# Output goes to $OUT (the device tool's folder) or out/gpu.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 bench/gpu.py --out "$OUT" 2>&1 | tee "$OUT/gpu_bench.log"
# A live server on CUDA (needs the server's packages; skipped when they are missing).
if python3 -c "import fastapi, uvicorn, pydantic_settings, multipart" 2>/dev/null; then
  python3 bench/gpu_server_check.py 2>&1 | tee "$OUT/gpu_server.log"
else
  echo "server packages missing: live CUDA server check skipped"
fi
