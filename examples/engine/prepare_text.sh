#!/usr/bin/env bash
# Prepares the example engine's text corpora and prints where they are:
#   linux-doc: /usr/share/doc/linux-doc-6.1/html/_sources (*.rst.txt; Debian
#              package linux-doc-6.1) - calibration (--split calib, even
#              indices of the sorted file list) and evaluation (--split eval).
#   kjv:       $HEADRECON_CACHE/text/kjv.txt (default ~/.cache/headrecon/text),
#              the King James Bible from Debian's bible-kjv-text, whose data
#              file is compressed: the `bible` program (package bible-kjv)
#              prints it. Out-of-domain evaluation text.
# With --install, installs the Debian packages first (needs root and apt).
set -euo pipefail
docs=/usr/share/doc/linux-doc-6.1/html/_sources
cache=${HEADRECON_CACHE:-${HOME:-.}/.cache/headrecon}
kjv=$cache/text/kjv.txt

if [ "${1:-}" = "--install" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends linux-doc-6.1 bible-kjv-text bible-kjv
fi

if [ -d "$docs" ]; then
  echo "linux-doc: $docs ($(find "$docs" -name '*.rst.txt' | wc -l) .rst.txt files)"
else
  echo "linux-doc: missing (apt-get install linux-doc-6.1, or run $0 --install)" >&2
fi

if [ ! -s "$kjv" ]; then
  if command -v bible >/dev/null; then
    mkdir -p "$(dirname "$kjv")"
    bible "Gen1:1-Rev22:21" > "$kjv.tmp" 2>/dev/null
    mv "$kjv.tmp" "$kjv"
  else
    echo "kjv: missing (apt-get install bible-kjv-text bible-kjv, or run $0 --install)" >&2
    exit 1
  fi
fi
echo "kjv: $kjv ($(wc -c < "$kjv") bytes)"
