#!/usr/bin/env bash
# Every deployment check, in order; stops at the first failure.
#
# Usage: .ci/checks/all.sh [EXPORTED_METRICS_FILE]
#   EXPORTED_METRICS_FILE: one metric name per line, generated from
#   src/metrics.rs; defaults to the checked-in .ci/checks/exported_metrics.txt.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
metrics="${1:-$here/exported_metrics.txt}"

"$here/py.sh" compose.py
"$here/py.sh" dashboard.py "$metrics"
"$here/promtool.sh"
python3 "$here/modules.py" "$here/../../src"
