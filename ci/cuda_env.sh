# Sourced by ci/cuda_check.sh and ci/gpu.sh: puts an nvcc on PATH (and CUDA_ROOT/CUDA_PATH, the
# compute capability candle's build compiles for). A machine's own CUDA toolkit wins; otherwise nvcc
# comes from PyPI into a private venv (STACK_NOTES: pin the packages to one minor version; cccl:
# cuda_fp16.h includes <nv/target> in CUDA 13 and pulls the newest runtime headers, which must match
# nvcc). With CUDA_LINK_LIBS=1 the venv also gets the libraries a binary links (cuBLAS, cuRAND,
# NCCL), for GPU machines without a toolkit; cargo check (ci/cuda_check.sh) links nothing.
cuda_from_pypi() {
    local venv=${CUDA_VENV:-target/cuda-venv}
    local packages=("nvidia-cuda-nvcc==13.2.*" "nvidia-nvvm==13.2.*" "nvidia-cuda-crt==13.2.*"
        "nvidia-cuda-cccl==13.2.*" "nvidia-cuda-runtime==13.2.*")
    if [ "${CUDA_LINK_LIBS:-0}" = 1 ]; then
        packages+=("nvidia-cublas==13.*" "nvidia-curand==10.*" "nvidia-nccl-cu13")
    fi
    if [ ! -x "$venv/bin/python" ]; then
        echo "==> nvcc from PyPI into $venv"
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q "${packages[@]}"
    CUDA=$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
    if [ "${CUDA_LINK_LIBS:-0}" = 1 ]; then
        # The wheels ship versioned .so files only; the linker wants the plain names.
        local libs
        libs=$("$venv/bin/python" -c 'import nvidia, glob, os; print(":".join(sorted({os.path.dirname(p) for p in glob.glob(os.path.join(nvidia.__path__[0], "**", "lib*.so*"), recursive=True)})))')
        local dir
        IFS=: read -ra dirs <<< "$libs"
        for dir in "${dirs[@]}"; do
            for so in "$dir"/lib*.so.*; do
                [ -e "$so" ] || continue
                local plain=${so%%.so.*}.so
                [ -e "$plain" ] || ln -s "$(basename "$so")" "$plain"
            done
        done
        export LIBRARY_PATH="$libs${LIBRARY_PATH:+:$LIBRARY_PATH}"
        export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
}

if command -v nvcc > /dev/null && [ -z "${CUDA_FROM_PYPI:-}" ]; then
    CUDA=$(dirname "$(dirname "$(command -v nvcc)")")
else
    cuda_from_pypi
fi
export PATH="$CUDA/bin:$PATH" CUDA_ROOT="$CUDA" CUDA_PATH="$CUDA"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
