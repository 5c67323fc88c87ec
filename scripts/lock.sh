#!/usr/bin/env bash
# Regenerate constraints.txt: the exact version of every dependency fmeval is
# tested with (Linux x86-64, Python 3.11 -- CI's platform), resolved from
# pyproject.toml (with the `test`, `robustness`, `data`, `server`, `server-test` and `track-*` extras).
#
# Deterministic: uv resolves against PyPI as it was at LOCK_DATE
# (--exclude-newer), so running this again gives the same file until LOCK_DATE
# is moved on purpose. To take newer releases: run `.ci/drift` first (it tests
# the newest allowed versions), then set LOCK_DATE below to today and rerun.
#
# A package index can gain files dated before LOCK_DATE after the lock was
# made (a mirror backfilling a release: accelerate 1.16.0, uploaded
# 2026-11-16, appeared on this project's index on 2026-12-02), so a fresh
# resolution is not reproducible forever. `--prefer FILE` keeps FILE's
# versions wherever they still satisfy pyproject.toml at LOCK_DATE: the check
# that the committed lock is a complete, valid resolution (tests/test_lock.py).
#
# usage: scripts/lock.sh [-o FILE] [--prefer LOCK]      (default: constraints.txt, fresh)
set -euo pipefail
cd "$(dirname "$0")/.."

LOCK_DATE="2026-12-01T00:00:00Z"
UV_VERSION="0.13.9"   # pinned: the output format is part of the lock
PYTHON_VERSION="3.11"
PLATFORM="x86_64-manylinux_2_28"

out="constraints.txt"
prefer=""
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out="$2"; shift 2 ;;
    --prefer) prefer="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "scripts/lock.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

# uv itself, at the pinned version, in a tool venv of its own (never in the project's).
uv=""
if command -v uv >/dev/null 2>&1 && [ "$(uv --version | cut -d' ' -f2)" = "$UV_VERSION" ]; then
  uv="$(command -v uv)"
else
  tools="${XDG_CACHE_HOME:-$HOME/.cache}/fmeval/uv-$UV_VERSION"
  if [ ! -x "$tools/bin/uv" ]; then
    python3 -m venv "$tools"
    "$tools/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
  fi
  uv="$tools/bin/uv"
fi

tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
# A fresh output file: uv prefers versions already in -o, which would make the
# result depend on the previous lock instead of only on LOCK_DATE -- unless asked (--prefer).
if [ -n "$prefer" ]; then
  [ -f "$prefer" ] || { echo "scripts/lock.sh: --prefer $prefer: no such file" >&2; exit 2; }
  cp "$prefer" "$tmp"
fi
UV_NO_CONFIG=1 "$uv" pip compile pyproject.toml --extra test --extra robustness --extra data --extra server --extra server-test \
  --extra track-wandb --extra track-mlflow --extra track-tensorboard \
  --python-version "$PYTHON_VERSION" --python-platform "$PLATFORM" \
  --exclude-newer "$LOCK_DATE" --index-url https://pypi.org/simple \
  --custom-compile-command "scripts/lock.sh" --no-progress --quiet -o "$tmp"

{
  echo "# The exact versions fmeval is tested with (Linux x86-64, Python $PYTHON_VERSION),"
  echo "# resolved from pyproject.toml against PyPI as of $LOCK_DATE. Install with"
  echo "#   pip install -c constraints.txt -e \".[test]\"   (extras: data, server, server-test, track; robustness: scripts/install-robustness.sh)"
  echo "# Do not edit: regenerate with scripts/lock.sh (tests/test_lock.py checks that"
  echo "# it reproduces this file); .ci/drift tests the newest versions pyproject allows."
  cat "$tmp"
} > "$out.tmp.$$"
mv "$out.tmp.$$" "$out"
echo "wrote $out ($(grep -c '==' "$out") pinned packages, PyPI as of $LOCK_DATE)"
