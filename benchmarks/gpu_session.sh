#!/usr/bin/env bash
# Every GPU check netvis has, in one call of about 10 minutes: the CUDA tests and the GPU benchmarks
# (saliency fp32 and bf16 vs Captum on ResNet-50, incremental occlusion on ResNet-50 and VGG-16, approximate
# occlusion with its quality contract on the wafer-map ResNet, resnet18 and vgg16, and the
# Fashion-MNIST ResNet-18 training target). Each step has its own time limit, so one slow step cannot
# take the others' results with it. Results: JSON files, logs and summary.txt in $OUT (default
# ./gpu-results).
#
# The GPU machine needs the netvis source (it runs from src/ without installing), PyTorch and
# torchvision, Captum for the comparisons and the full Fashion-MNIST. Prepare them in the repository's
# root, in a folder git ignores:
#
#   echo /.gpu/ >> .git/info/exclude
#   mkdir -p .gpu/whl && cp -r /usr/share/datasets/fashion-mnist .gpu/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .gpu/whl captum
#
# then run, carrying .gpu:   bash benchmarks/gpu_session.sh
set -uo pipefail
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
if compgen -G ".gpu/whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/netvis-site .gpu/whl/*.whl
    export PYTHONPATH=/tmp/netvis-site
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
[ -d .gpu/fashion-mnist ] && export NETVIS_DATA="$PWD/.gpu/fashion-mnist"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name())" >> "$OUT/gpu.txt" 2>&1

step() {  # step NAME SECONDS COMMAND...: stdout to NAME.json, stderr to NAME.log, exit status to summary.txt
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.json" 2> "$OUT/$name.log"
    echo "$name rc=$? seconds=$((SECONDS - start))" | tee -a "$OUT/summary.txt"
}

step tests 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/inversion/test_inversion_optimise.py
step saliency_cuda 150 python3 benchmarks/saliency.py --device cuda --model resnet50
step occlusion_incremental_cuda 150 python3 benchmarks/occlusion_incremental.py --part engines --device cuda --models resnet50,vgg16
step occlusion_contract_cuda 100 python3 benchmarks/occlusion_incremental.py --part contract --device cuda
step train_fashion_mnist_resnet18_cuda 110 python3 benchmarks/train_fashion_mnist.py --model resnet18 --device cuda
