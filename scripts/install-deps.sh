#!/usr/bin/env bash
# Installs the build dependencies from Debian 12's packages (idempotent).
set -euo pipefail
pkgs=(cmake g++ make libxtensor-dev libxtensor-blas-dev xtl-dev libxsimd-dev libopenblas-dev
      liblapack-dev libhwy-dev nlohmann-json3-dev catch2 libbenchmark-dev doxygen pkg-config python3-venv python3-matplotlib
      libcli11-dev  # the command-line tools (examples) only, not the library
      linux-doc-6.1 bible-kjv
      clang-14 libclang-rt-14-dev  # libFuzzer for scripts/fuzz.sh
      openmpi-bin libopenmpi-dev)  # HEADRECON_WITH_MPI (ci-cxx17: mpirun headrecon fit, tests on 1, 2, 4 ranks)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
