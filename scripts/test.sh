#!/usr/bin/env bash
# The whole test suite: C++17 build (library, tool, tests; warnings as errors)
# and a C++20 build of the tests, each run through ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --workflow --preset ci-cxx17
cmake --workflow --preset ci-cxx20
