#!/usr/bin/env bash
# Runs one of the Python checks with PyYAML available: installs it with pip
# when `import yaml` fails (into the active environment, else for the user,
# else past Debian's externally-managed marker).
#
# Usage: .ci/checks/py.sh compose.py [ARGS...]
#        .ci/checks/py.sh dashboard.py EXPORTED_METRICS_FILE
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"
script="${1:?usage: py.sh SCRIPT [ARGS...]}"
shift

if ! "$python" -c 'import yaml' >/dev/null 2>&1; then
  echo "py.sh: PyYAML missing, installing it with pip" >&2
  "$python" -m pip install --quiet 'PyYAML>=6' 2>/dev/null \
    || "$python" -m pip install --quiet --user 'PyYAML>=6' 2>/dev/null \
    || "$python" -m pip install --quiet --user --break-system-packages 'PyYAML>=6'
fi
exec "$python" "$here/$script" "$@"
