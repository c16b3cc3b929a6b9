#!/usr/bin/env bash
# Re-resolve requirements/lock.txt from pyproject.toml after changing a dependency. Commit both files.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/uv pip compile pyproject.toml --extra operator --extra worker --extra dev \
  --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements/lock.txt "$@"
