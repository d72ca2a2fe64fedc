#!/usr/bin/env bash
# The main job: build the tool and run its demo (synthetic model with planted
# structure -> fit K and V maps -> plan file), printing what it finds.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --workflow --preset release >/dev/null
build/release/examples/headrecon_cli/headrecon demo --dir build/demo "$@"
