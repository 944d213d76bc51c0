# Sourced by scripts/*: a virtualenv outside the checkout with warmbuild installed editable.
source "$(dirname "${BASH_SOURCE[0]}")/../testbed/lib.sh"
WARMBUILD_VENV="${WARMBUILD_VENV:-$WARMBUILD_CACHE/venv}"
if [[ ! -x "$WARMBUILD_VENV/bin/python" ]]; then
  tb_log "creating $WARMBUILD_VENV"
  python3 -m venv "$WARMBUILD_VENV" >&2
fi
"$WARMBUILD_VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$TESTBED_SRC/..[${WARMBUILD_EXTRAS:-test}]" >&2
export PATH="$WARMBUILD_VENV/bin:$PATH"
