#!/usr/bin/env bash
# Optional MedMNIST-C corruptions for `fmeval robustness`, installed without breaking fmeval's pins.
#
#   scripts/install-robustness.sh [PYTHON]     (default: .venv/bin/python, else python3)
#
# 1. ImageMagick's MagickWand library (Wand loads it at import; apt-get when run as root on
#    Debian/Ubuntu, otherwise it says what to install).
# 2. pip install -e ".[robustness]": opencv-python-headless, Wand, scikit-image, scipy.
# 3. pip install --no-deps medmnistc==0.1.0: the MedMNIST-C authors' package. Its metadata pins
#    medmnist==3.0.1 and scikit-image==0.23.2 and asks for the GUI opencv-python; honouring that
#    would downgrade medmnist below what fmeval needs (>=3.0.2), so its dependencies come from
#    step 2 instead and `pip check` will list those three pins as unmet. That is expected.
# Every pip call keeps constraints.txt (the torch/torchvision pair).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${1:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
MEDMNISTC_VERSION=0.1.0

if ! ldconfig -p 2>/dev/null | grep -q 'libMagickWand'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # The runtime library only (libmagickwand-dev would pull ~70 build packages).
    apt-get update -qq >/dev/null
    pkg=$(apt-cache search --names-only '^libmagickwand-[0-9.]+q16-[0-9]+$' | awk '{print $1}' | sort | tail -n 1)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkg:-libmagickwand-dev}" >/dev/null
  else
    echo "install-robustness: ImageMagick's MagickWand library is missing; install it first" \
         "(Debian/Ubuntu: sudo apt-get install libmagickwand-dev; macOS: brew install imagemagick)" >&2
    exit 1
  fi
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "$PY" -m pip install -q -c constraints.txt -e ".[robustness]" >"$log" 2>&1 \
   || ! "$PY" -m pip install -q -c constraints.txt --no-deps "medmnistc==$MEDMNISTC_VERSION" >>"$log" 2>&1; then
  grep -v "^WARNING: Location" "$log" >&2; exit 1
fi
"$PY" -c "from fmeval.data.corruptions import corruptions_for, medmnistc_version as v; \
print('medmnistc', v(), '-', len(corruptions_for('pneumoniamnist')), 'PneumoniaMNIST corruptions')"
