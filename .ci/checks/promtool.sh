#!/usr/bin/env bash
# Validates deploy/prometheus with promtool: the scrape config, the alert
# rules, their unit tests (alerts_test.yml), and the PromQL of every
# dashboard panel (each query is checked as a recording rule).
# Installs promtool from the Debian package `prometheus` when it is missing.
#
# Usage: .ci/checks/promtool.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
prom="$root/deploy/prometheus"

if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool: not found, installing the Debian package prometheus" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "promtool: need root or sudo to install it" >&2; exit 1; }
    sudo="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends prometheus
fi
promtool --version 2>&1 | head -n 1

# promtool resolves rule_files relative to the file that names them.
promtool check config "$prom/prometheus.yml"
promtool check rules "$prom/alerts.yml"
promtool test rules "$prom/alerts_test.yml"

# Dashboard queries: Grafana's variables replaced by plain values, then each
# query wrapped as a recording rule so that promtool parses it.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 - "$root/deploy/grafana/dashboards" "$tmp/dashboard_rules.yml" <<'PY'
import json, re, sys
from pathlib import Path

subst = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m", "$__range_s": "3600"}
rules = []
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    dashboard = json.loads(path.read_text())
    stack = list(dashboard.get("panels", []))
    while stack:
        panel = stack.pop(0)
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            expr = target.get("expr")
            if not expr:
                continue
            for var, value in subst.items():
                expr = expr.replace(var, value)
            expr = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)  # template variables
            rules.append({"record": f"dashboard:{path.stem}_panel_{panel.get('id')}:{target.get('refId', 'A')}".replace("-", "_"),
                          "expr": expr})
json.dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}, open(sys.argv[2], "w"), indent=1)
print(f"promtool: {len(rules)} dashboard queries to check")
PY
promtool check rules "$tmp/dashboard_rules.yml"
echo "promtool: OK"
