#!/bin/bash
# Steps of the GPU rehearsal on the lent GPU machine (see docs/gpu-rehearsal.md).
#   gpu_device.sh part1   .gpu/vllm/p1 + .gpu/whl.tgz carried: stage, start the streaming unpack
#   gpu_device.sh part N  .gpu/vllm/pN carried (N=2,3): stage it
#   gpu_device.sh mnode OUT [ROUNDS] [--by-hand]: two nodes of one GPU each (benchmarks/multinode_gpu.py)
#   gpu_device.sh run OUT SHAPES [SIGKILL_SHAPES] [BUSY_SHAPES]: wait for the unpack, rehearse
#   gpu_device.sh supervise OUT [SHAPE] [FAULTS]: wait for the unpack, SIGKILLs under --restart on-failure
#     sampled by nvidia-smi (benchmarks/gpu_supervise.py; docs/supervise.md "Proven on a real GPU")
#   gpu_device.sh router OUT [ALTERNATIONS] [PHASES]: wait for the unpack, `dsagent router` sleep/wake and packing
#     with real vLLM (benchmarks/gpu_router.py; docs/router-gpu.md). With part 3 in one call:
#     bash benchmarks/gpu_device.sh part 3 && bash benchmarks/gpu_device.sh router "$OUT"
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONPATH=/tmp/site:/tmp/site2:$here PYTHONUNBUFFERED=1 DSAGENT_PYTHON=python3 DSAGENT_HOME=/tmp/dsh
export VLLM_ATTENTION_BACKEND=FLASH_ATTN VLLM_USE_FLASHINFER_SAMPLER=0
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
case "$1" in
part1)
  mkdir -p /tmp/stage /tmp/site /tmp/site2
  cp .gpu/vllm/p1/part_00 /tmp/stage/ && touch /tmp/stage/part_00.done
  tar xzf .gpu/whl.tgz -C /tmp/stage
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site2 /tmp/stage/whl/*.whl
  # Unpack as the parts arrive, in its own session so it outlives this call.
  setsid bash -c 'for i in 00 01 02; do while [ ! -e /tmp/stage/part_$i.done ]; do sleep 1; done; cat /tmp/stage/part_$i; done \
    | tar -xJ -C /tmp/site && touch /tmp/site.done || touch /tmp/site.failed' </dev/null >/tmp/unpack.log 2>&1 &
  nvidia-smi -L; python3 --version
  python3 -c "import torch, pynvml, psutil, httpx, tenacity, langchain_deepseek; print('torch', torch.__version__, torch.cuda.device_count(), torch.cuda.mem_get_info(0)); pynvml.nvmlInit(); print('nvml', pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)))"
  ;;
part)
  cp ".gpu/vllm/p$2/part_0$(($2 - 1))" /tmp/stage/ && touch "/tmp/stage/part_0$(($2 - 1)).done"; ls -la /tmp/stage
  ;;
run)
  for _ in $(seq 300); do [ -e /tmp/site.done ] || [ -e /tmp/site.failed ] && break; sleep 1; done
  [ -e /tmp/site.done ] || { echo "unpack failed"; cat /tmp/unpack.log; exit 1; }
  mkdir -p /tmp/dsh
  python3 benchmarks/gpu_rehearsal.py run --tokenizer /tmp/stage/tok --shapes "$3" --sigkill "${4:-}" --busy "${5:-}" \
    --out "$2/rehearsal.json"
  rc=$?
  tar czf "$2/logs.tgz" -C /tmp/dsh logs deployments 2>/dev/null
  nvidia-smi --query-gpu=index,memory.used --format=csv
  exit $rc
  ;;
supervise)
  for _ in $(seq 300); do [ -e /tmp/site.done ] || [ -e /tmp/site.failed ] && break; sleep 1; done
  [ -e /tmp/site.done ] || { echo "unpack failed"; cat /tmp/unpack.log; exit 1; }
  mkdir -p /tmp/dsh
  nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv
  # the whole call has 600 s: what the unpack wait took comes off the run's budget
  python3 benchmarks/gpu_supervise.py --tokenizer /tmp/stage/tok --shape "${3:-qwen1.5b}" \
    --faults "${4:-api,engine,api}" --budget $((570 - SECONDS)) --out "$2/supervise.json"
  rc=$?
  tar czf "$2/logs.tgz" -C /tmp/dsh logs deployments 2>/dev/null
  nvidia-smi --query-gpu=index,memory.used --format=csv
  exit $rc
  ;;
router)
  for _ in $(seq 300); do [ -e /tmp/site.done ] || [ -e /tmp/site.failed ] && break; sleep 1; done
  [ -e /tmp/site.done ] || { echo "unpack failed"; cat /tmp/unpack.log; exit 1; }
  mkdir -p /tmp/dsh
  nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv
  # the whole call has 600 s: what the unpack wait took comes off the run's budget
  python3 benchmarks/gpu_router.py --tokenizer /tmp/stage/tok --alternations "${3:-20}" \
    --phases "${4:-switch,coplace}" --budget $((575 - SECONDS)) --out "$2/router.json"
  rc=$?
  tar czf "$2/logs.tgz" -C /tmp/dsh logs deployments router.toml 2>/dev/null
  nvidia-smi --query-gpu=index,memory.used --format=csv
  exit $rc
  ;;
mnode)
  for _ in $(seq 300); do [ -e /tmp/site.done ] || [ -e /tmp/site.failed ] && break; sleep 1; done
  [ -e /tmp/site.done ] || { echo "unpack failed"; cat /tmp/unpack.log; exit 1; }
  python3 benchmarks/multinode_gpu.py --tokenizer /tmp/stage/tok --out "$2/multinode.json" --rounds "${3:-stop,kill}" ${4:-}
  rc=$?
  nvidia-smi --query-gpu=index,memory.used --format=csv
  exit $rc
  ;;
esac
