#!/bin/bash
# STAND-IN for nvidia-smi (no GPU on the test machines). Honours the two calls
# the gpus validation script makes (the GPU query, and -q for the driver's
# CUDA version) and prints what a node with two V100s would;
# GPU_STANDIN_COUNT (default 2), GPU_STANDIN_CUDA (default 12.2) and
# GPU_STANDIN_FAIL=1 vary it.
set -u
case " $* " in
  *" --query-gpu=index,uuid,name,memory.total,compute_cap "*) [[ " $* " == *" --format=csv,noheader,nounits "* ]] || exit 2 ;;
  " -q ") ;;
  *) echo "nvidia-smi stand-in: unsupported arguments: $*" >&2; exit 2 ;;
esac
[ "${GPU_STANDIN_FAIL:-0}" = 1 ] && { echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." >&2; exit 9; }
if [ "$*" = "-q" ]; then
  printf '\n==============NVSMI LOG==============\n\nTimestamp                                 : Fri Dec  4 05:00:00 2026\n'
  printf 'Driver Version                            : 535.104.05\nCUDA Version                              : %s\n\n' "${GPU_STANDIN_CUDA:-12.2}"
  printf 'Attached GPUs                             : %d\n' "${GPU_STANDIN_COUNT:-2}"
  exit 0
fi
for ((i = 0; i < ${GPU_STANDIN_COUNT:-2}; i++)); do
  printf '%d, GPU-0000000%d-aaaa-bbbb-cccc-dddddddddddd, Tesla V100-SXM2-16GB, 16160, 7.0\n' "$i" "$i"
done
