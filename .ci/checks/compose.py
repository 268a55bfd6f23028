#!/usr/bin/env python3
"""Static checks of docker-compose.yml (no Docker engine needed).

* the expected services exist;
* every depends_on target exists, and a `service_healthy` target has a
  healthcheck, a `service_completed_successfully` target does not restart;
* every pipes service runs the same image, exactly one of them builds it and
  the others never pull it;
* every pipes service gets the shared environment (x-pipes-env);
* every bind-mounted ./deploy/... path exists in the repository;
* no two services publish the same host port (and a replicated service
  publishes none).

Usage: compose.py [--root REPO] [--file docker-compose.yml]
Exit status 0 when every check passes, 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import yaml

INFRA = {"postgres", "redis", "rabbitmq", "prometheus", "grafana"}
PIPES = {"migrate", "serve", "scheduler", "worker", "demo-provider"}
EXPECTED = INFRA | PIPES
PIPES_IMAGE = "pipes:local"
# Environment every pipes role needs (DESIGN.md §5).
REQUIRED_ENV = {
    "PIPES_DATABASE_URL", "PIPES_REDIS_URL", "PIPES_AMQP_URL", "PIPES_LISTEN",
    "PIPES_PUBLIC_URL", "PIPES_ENCRYPTION_KEYS", "PIPES_METRICS_LISTEN",
    "PIPES_LOG_FORMAT",
}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: str) -> str:
    """Resolve ${VAR}, ${VAR:-default} and $VAR the way compose does ($$ is a literal $)."""
    value = value.replace("$$", "\0")

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        default = m.group(2) or ""
        return os.environ.get(name) or default

    return _VAR.sub(sub, value).replace("\0", "$")


def as_list(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def depends_on(svc: dict) -> dict[str, str]:
    """depends_on in either syntax, as {target: condition}."""
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: "service_started" for d in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def host_ports(svc: dict) -> list[tuple[str, str, str]]:
    """Published ports as (host_ip, host_port, protocol); container-only ports are skipped."""
    out = []
    for entry in as_list(svc.get("ports")):
        if isinstance(entry, dict):
            published = entry.get("published")
            if published is None:
                continue
            out.append((str(entry.get("host_ip", "0.0.0.0")), interpolate(str(published)),
                        entry.get("protocol", "tcp")))
            continue
        spec = interpolate(str(entry))
        proto = "tcp"
        if "/" in spec:
            spec, proto = spec.rsplit("/", 1)
        parts = spec.rsplit(":", 2)
        if len(parts) == 1:
            continue  # container port only: Docker picks a free host port
        host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
        out.append((host_ip.strip("[]"), parts[-2], proto))
    return out


def expand_range(port: str) -> list[int]:
    if "-" in port:
        lo, hi = port.split("-", 1)
        return list(range(int(lo), int(hi) + 1))
    return [int(port)]


def bind_sources(svc: dict) -> list[str]:
    out = []
    for vol in as_list(svc.get("volumes")):
        if isinstance(vol, dict):
            if vol.get("type") == "bind":
                out.append(str(vol["source"]))
            continue
        source = str(vol).split(":", 1)[0]
        if source.startswith((".", "/", "~")):
            out.append(source)
    return out


def env_keys(svc: dict) -> set[str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return {e.split("=", 1)[0] for e in env}
    return set(env)


def check(doc: dict, root: Path) -> list[str]:
    errors: list[str] = []
    services: dict = doc.get("services") or {}

    missing = sorted(EXPECTED - set(services))
    if missing:
        errors.append(f"missing services: {', '.join(missing)}")

    if "x-pipes-env" not in doc:
        errors.append("no shared environment `x-pipes-env` at the top level")

    for name, svc in services.items():
        for target, condition in depends_on(svc).items():
            if target not in services:
                errors.append(f"{name}: depends_on unknown service `{target}`")
                continue
            dep = services[target]
            if condition == "service_healthy" and not (dep.get("healthcheck") or {}).get("test"):
                errors.append(f"{name}: waits for `{target}` to be healthy, but `{target}` has no healthcheck")
            if condition == "service_completed_successfully" and dep.get("restart", "no") not in ("no", "on-failure"):
                errors.append(f"{name}: waits for `{target}` to complete, but `{target}` restarts ({dep.get('restart')})")

    # One image for every role, built once.
    pipes_services = {n: s for n, s in services.items() if n in PIPES or s.get("image") == PIPES_IMAGE}
    builders = [n for n, s in pipes_services.items() if "build" in s]
    for name, svc in sorted(pipes_services.items()):
        if svc.get("image") != PIPES_IMAGE:
            errors.append(f"{name}: image is {svc.get('image')!r}, expected {PIPES_IMAGE!r} like every pipes role")
        if "build" not in svc and svc.get("pull_policy") != "never":
            errors.append(f"{name}: reuses {PIPES_IMAGE} without `pull_policy: never`, so compose may try to pull it")
        lacking = sorted(REQUIRED_ENV - env_keys(svc))
        if lacking:
            errors.append(f"{name}: environment lacks {', '.join(lacking)} (merge x-pipes-env)")
    if len(builders) != 1:
        errors.append(f"exactly one pipes service should build {PIPES_IMAGE}, found {builders or 'none'}")
    for name, svc in services.items():
        if name not in pipes_services and "build" in svc:
            errors.append(f"{name}: unexpected build section")

    # Bind mounts of repository files must exist.
    for name, svc in services.items():
        for source in bind_sources(svc):
            if source.startswith("./deploy/") or source == "./deploy":
                if not (root / source).exists():
                    errors.append(f"{name}: mounts {source}, which does not exist in the repository")

    # Host ports.
    seen: dict[tuple[int, str], str] = {}
    for name, svc in services.items():
        replicas = ((svc.get("deploy") or {}).get("replicas")) or 1
        published = host_ports(svc)
        if replicas > 1 and published:
            errors.append(f"{name}: {replicas} replicas cannot share published host ports")
        for host_ip, port, proto in published:
            try:
                numbers = expand_range(port)
            except ValueError:
                errors.append(f"{name}: cannot read published port {port!r}")
                continue
            for number in numbers:
                key = (number, proto)
                if key in seen and seen[key] != name:
                    errors.append(f"{name}: host port {number}/{proto} is also published by {seen[key]}")
                seen.setdefault(key, name)
    return errors


def main() -> int:
    here = Path(__file__).resolve()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=here.parents[2], help="repository root")
    parser.add_argument("--file", type=Path, default=None, help="compose file (default ROOT/docker-compose.yml)")
    args = parser.parse_args()
    path = args.file or args.root / "docker-compose.yml"
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        print(f"compose: cannot read {path}: {err}", file=sys.stderr)
        return 1
    errors = check(doc or {}, args.root)
    for e in errors:
        print(f"compose: {e}", file=sys.stderr)
    if errors:
        return 1
    print(f"compose: OK ({len(doc['services'])} services in {path.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
