#!/usr/bin/env bash
# A separate virtualenv for the serving benchmark's competitors (LitServe, Ray Serve), outside the repository so
# that their pins never touch ours. torch, transformers and the model come from the project's .venv through a
# .pth file placed last on sys.path; the competitors' own web stacks (fastapi, uvicorn, pydantic...) shadow ours.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
bench_venv="${DEEPSEEK_BENCH_VENV:-$HOME/.cache/deepseek-operator/bench-venv}"
litserve_version=0.2.19
ray_version=2.60.0
if [ ! -x "$bench_venv/bin/python" ]; then
  "$root/.venv/bin/uv" venv -q --python "$root/.venv/bin/python" "$bench_venv"
fi
site=$("$bench_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
project_site=$("$root/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$project_site" >"$site/zz-deepseek-project.pth"
VIRTUAL_ENV="$bench_venv" "$root/.venv/bin/uv" pip install -q "litserve==$litserve_version" "ray[serve]==$ray_version"
echo "$bench_venv"
