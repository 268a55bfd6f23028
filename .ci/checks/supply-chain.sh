#!/usr/bin/env bash
# Supply-chain check of Cargo.lock with cargo-deny (config: deny.toml):
# RustSec advisories from a local database, never fetched; licences; bans
# (wildcards, denied crates, duplicate versions as warnings); sources
# (crates.io only). Fails on any advisory that deny.toml does not accept
# with a reason.
#
# Usage: .ci/checks/supply-chain.sh [CHECK...]   (default: all four)
#   PIPES_ADVISORY_DB  the advisory database: a git clone of RustSec's
#                      advisory-db, or a plain copy of one with a SNAPSHOT
#                      file naming its date (YYYY-MM-DD); relative paths are
#                      taken from the repository root. Default:
#                      ../shared/advisory-db.
#   CARGO_DENY         the cargo-deny binary; default: the one
#                      .ci/install-tools puts in target/ci-tools.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"

deny="${CARGO_DENY:-$root/target/ci-tools/bin/cargo-deny}"
if [ ! -x "$deny" ]; then
  echo "supply-chain: $deny not found; run .ci/install-tools" >&2
  exit 1
fi
"$deny" --version

src="${PIPES_ADVISORY_DB:-../shared/advisory-db}"
if [ ! -d "$src/crates" ]; then
  echo "supply-chain: no advisory database at $src (no crates/ folder); set PIPES_ADVISORY_DB" >&2
  exit 1
fi
src="$(cd "$src" && pwd)"

# cargo-deny opens <db-path>/<name derived from the db-urls entry> as a git
# repository and takes its age from the fetch or HEAD commit time; db-path is
# target/advisory-dbs in deny.toml and this is the name for RustSec's URL.
dbs="$root/target/advisory-dbs"
db="$dbs/advisory-db-3157b0e258782691"
rm -rf "$db"
mkdir -p "$dbs"
if [ -e "$src/.git" ]; then
  ln -s "$src" "$db"
  echo "advisory database: git clone $src, HEAD $(git -C "$src" log -1 --format='%h %cs')"
else
  # A plain snapshot: a one-commit repository dated by its SNAPSHOT file, so
  # that cargo-deny's staleness limit applies to the snapshot's real age.
  snapshot_date=$(grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}' "$src/SNAPSHOT" 2>/dev/null | tail -1 || true)
  if [ -z "$snapshot_date" ]; then
    echo "supply-chain: $src is not a git clone and has no SNAPSHOT file with a YYYY-MM-DD date" >&2
    exit 1
  fi
  cp -R "$src" "$db"
  chmod -R u+w "$db"
  stamp="${snapshot_date}T00:00:00Z"
  git -C "$db" init -q
  git -C "$db" add -A
  GIT_AUTHOR_DATE="$stamp" GIT_COMMITTER_DATE="$stamp" \
    git -C "$db" -c user.name=advisory-db -c user.email=advisory-db@localhost \
    -c commit.gpgsign=false commit -q -m "snapshot $snapshot_date"
  touch -d "$stamp" "$db/.git/HEAD"
  age_days=$(( ($(date -u +%s) - $(date -u -d "$stamp" +%s)) / 86400 ))
  echo "advisory database: $src ($(head -1 "$src/SNAPSHOT")), $age_days days old"
  if [ "$age_days" -gt 90 ]; then
    echo "warning: the advisory database is over 90 days old; refresh it (README.md, \"Supply chain\")" >&2
  fi
fi

# Every accepted advisory carries its reason (tomllib: Python 3.11+, as in
# the venv of .ci/install-tools).
py="$root/target/ci-tools/bin/python"
[ -x "$py" ] || py=python3
"$py" - deny.toml <<'PY'
import sys, tomllib
cfg = tomllib.load(open(sys.argv[1], "rb"))
bad = [e for e in cfg.get("advisories", {}).get("ignore", [])
       if not (isinstance(e, dict) and str(e.get("reason", "")).strip())]
if bad:
    sys.exit(f"supply-chain: deny.toml [advisories] ignore entries without a reason: {bad}")
PY

# cargo-deny runs `cargo metadata` offline, which needs every locked crate's
# source (all targets), so fetch those from the registry first.
cargo fetch --locked --quiet

# --frozen: no network (the advisory database is not fetched) and Cargo.lock
# stays as it is.
"$deny" --frozen --color never check --hide-inclusion-graph "$@"
