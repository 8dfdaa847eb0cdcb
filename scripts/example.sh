#!/usr/bin/env bash
# Set up, build the example archive, run archivox over it, search the transcripts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
EXAMPLE=${EXAMPLE:-archivox-example}
rm -rf "$EXAMPLE"
archivox demo "$EXAMPLE/archive"
# Exit code 1 is expected here: the example archive holds three broken items on purpose.
archivox run "$EXAMPLE/archive/manifest.csv" --out "$EXAMPLE/out" || true
archivox search "shining over the old grain" --catalog "$EXAMPLE/out/catalog"
archivox status --catalog "$EXAMPLE/out/catalog" || true
echo "restored audio and transcripts: $EXAMPLE/out   catalog: $EXAMPLE/out/catalog"
