#!/usr/bin/env python3
"""Check that the dashboard and the alert rules only use metrics the code exports.

Every `pipes_*` name in deploy/grafana/dashboards/*.json, deploy/prometheus/
alerts.yml and alerts_test.yml is looked up in EXPORTED (one metric name per
line, `#` comments allowed), after stripping a histogram's `_bucket`, `_sum`
or `_count` suffix. The dashboards are also checked for shape: valid JSON,
unique panel ids, and every datasource pointing at the provisioned uid.

Usage: dashboard.py [--root REPO] EXPORTED
Exit status 0 when every name is exported, 1 otherwise. Exported metrics that
nothing displays or alerts on are listed as a note, not an error.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

METRIC = re.compile(r"(?<![A-Za-z0-9_:])pipes_[a-z0-9_]*[a-z0-9]")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
DATASOURCE_UID = "prometheus"


def read_exported(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(line)
    return names


def strings(node):
    """Every string in a JSON/YAML tree (keys excluded)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def resolve(name: str, exported: set[str]) -> str | None:
    """The exported metric a name refers to, or None."""
    if name in exported:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in exported:
            return name[: -len(suffix)]
    return None


def panels(dashboard: dict):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows nest their panels


def check_dashboard_shape(path: Path, dashboard: dict) -> list[str]:
    errors = []
    ids = [p.get("id") for p in panels(dashboard)]
    dupes = sorted({i for i in ids if ids.count(i) > 1 and i is not None})
    if dupes:
        errors.append(f"{path}: duplicate panel ids {dupes}")
    for panel in panels(dashboard):
        if panel.get("type") == "row":
            continue
        title = panel.get("title", "?")
        if not panel.get("targets"):
            errors.append(f"{path}: panel {title!r} has no query")
        for obj in [panel] + panel.get("targets", []):
            ds = obj.get("datasource")
            if isinstance(ds, dict) and ds.get("uid") != DATASOURCE_UID:
                errors.append(f"{path}: panel {title!r} uses datasource uid {ds.get('uid')!r}, expected {DATASOURCE_UID!r}")
            elif ds is not None and not isinstance(ds, dict):
                errors.append(f"{path}: panel {title!r} names its datasource {ds!r}; use {{\"uid\": \"{DATASOURCE_UID}\"}}")
    return errors


def main() -> int:
    here = Path(__file__).resolve()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exported", type=Path, help="file with one exported metric name per line")
    parser.add_argument("--root", type=Path, default=here.parents[2], help="repository root")
    args = parser.parse_args()

    try:
        exported = read_exported(args.exported)
    except OSError as err:
        print(f"dashboard: cannot read {args.exported}: {err}", file=sys.stderr)
        return 1
    if not exported:
        print(f"dashboard: {args.exported} lists no metric", file=sys.stderr)
        return 1

    errors: list[str] = []
    used: dict[str, set[str]] = {}  # metric name as written -> files using it
    sources = sorted((args.root / "deploy/grafana/dashboards").glob("*.json"))
    rules = [args.root / "deploy/prometheus/alerts.yml", args.root / "deploy/prometheus/alerts_test.yml"]
    if not sources:
        errors.append("no dashboard under deploy/grafana/dashboards")

    for path in sources + rules:
        rel = path.relative_to(args.root)
        try:
            text = path.read_text()
            tree = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as err:
            errors.append(f"{rel}: cannot parse: {err}")
            continue
        if path.suffix == ".json":
            errors += check_dashboard_shape(rel, tree)
        for s in strings(tree):
            for name in METRIC.findall(s):
                used.setdefault(name, set()).add(str(rel))

    referenced = set()
    for name in sorted(used):
        target = resolve(name, exported)
        if target is None:
            errors.append(f"{name} (in {', '.join(sorted(used[name]))}) is not an exported metric")
        else:
            referenced.add(target)

    for e in errors:
        print(f"dashboard: {e}", file=sys.stderr)
    unused = sorted(exported - referenced)
    if unused:
        print(f"dashboard: note: exported but not shown or alerted on: {', '.join(unused)}")
    if errors:
        return 1
    print(f"dashboard: OK ({len(referenced)} of {len(exported)} exported metrics used by "
          f"{len(sources)} dashboard(s) and the alert rules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
