# Sourced by the GPU scripts (gpu_check.sh, gpu_bench.sh) at their start, on the GPU machine: installs the
# carried wheels from .whl/ (made here by scripts/gpu_wheels.sh) into /tmp/site, puts it on PYTHONPATH, and
# records what the machine has. Without .whl the scripts still run; steps needing DeepSpeed/omegaconf say so.
if compgen -G ".whl/*.whl" >/dev/null; then
  "${PY:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} \
    || echo "gpu_env: installing the carried wheels failed; continuing without them" >&2
else
  echo "gpu_env: no .whl/ carried (run scripts/gpu_wheels.sh here and carry .whl): no omegaconf/DeepSpeed/Liger" >&2
fi
