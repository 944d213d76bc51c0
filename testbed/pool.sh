# The builder pool on the testbed: one emulated node (testbed/node_emulator.py) that runs a real
# buildkitd for each pod bound to it, and the `builders` StatefulSet (testbed/manifests/pool.yaml).
# Sourced by testbed/up and testbed/down after lib.sh and controlplane.sh, never run.
#
#   tb_pool_up       ensure the testbed venv, start the node emulator, apply the pool, wait until
#                    its builders are Ready
#   tb_pool_exports  print the export line for WARMBUILD_POOL
#   tb_pool_down     stop the node emulator, which stops the buildkitd of every pod (pods stay in the API)

POOL_NAME="default"
POOL_NAMESPACE="warmbuild"
POOL_BUILDERS=3
POOL_SELECTOR="app.kubernetes.io/name=warmbuild-builder,warmbuild.dev/pool=$POOL_NAME"
POOL_NODE="warmbuild-node-0"
POOL_FIRST_IP="127.0.0.10"  # builder pods get 127.0.0.10 and up (see DIRECT_BUILDER_IP in lib.sh)
TESTBED_VENV="$WARMBUILD_CACHE/testbed-venv"

# tb_pool_venv: the testbed's own Python environment (kubernetes client, PyYAML), made once per
# version of testbed/config/testbed-requirements.txt, independent of the project's venv.
tb_pool_venv() {
  local requirements="$TESTBED_SRC/config/testbed-requirements.txt" stamp="$TESTBED_VENV/.requirements"
  if [[ -x "$TESTBED_VENV/bin/python" ]] && cmp -s "$requirements" "$stamp"; then return 0; fi
  tb_log "creating $TESTBED_VENV (the node emulator's Python environment)"
  rm -rf "$TESTBED_VENV"
  if ! python3 -m venv "$TESTBED_VENV" >&2 2>/dev/null; then
    tb_log "installing Debian package python3-venv"
    rm -rf "$TESTBED_VENV"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >&2 \
      || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >&2; } \
      || tb_die "could not install python3-venv"
    python3 -m venv "$TESTBED_VENV" >&2 || tb_die "python3 -m venv $TESTBED_VENV failed"
  fi
  "$TESTBED_VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements" >&2 \
    || tb_die "installing $requirements into $TESTBED_VENV failed"
  cp "$requirements" "$stamp"
}

tb_pool_up() {
  local started=$SECONDS kubeconfig="$WARMBUILD_TESTBED_DIR/kubeconfig/admin.yaml"
  [[ -f "$kubeconfig" ]] || tb_die "no admin kubeconfig at $kubeconfig: the control plane must be up first"
  tb_pool_venv
  local python="$TESTBED_VENV/bin/python"
  tb_start node-emulator "$python" "$TESTBED_SRC/node_emulator.py" \
    --kubeconfig "$kubeconfig" --node "$POOL_NODE" \
    --state-dir "$WARMBUILD_TESTBED_DIR/node" --first-ip "$POOL_FIRST_IP"
  "$python" "$TESTBED_SRC/kube.py" --kubeconfig "$kubeconfig" apply "$TESTBED_SRC/manifests/pool.yaml" \
    || tb_die "could not apply testbed/manifests/pool.yaml"
  "$python" "$TESTBED_SRC/kube.py" --kubeconfig "$kubeconfig" wait-ready \
      --namespace "$POOL_NAMESPACE" --selector "$POOL_SELECTOR" --count "$POOL_BUILDERS" --port "$BUILDKITD_PORT" --timeout 180 \
      --while-pid "$(tb_recorded_pid node-emulator)" \
    || tb_die "the builder pool did not become Ready; see $WARMBUILD_TESTBED_DIR/logs/node-emulator.log"
  tb_log "builder pool '$POOL_NAME' ($POOL_BUILDERS builders on node $POOL_NODE) ready in $((SECONDS - started))s"
}

tb_pool_exports() {
  printf 'export WARMBUILD_POOL=%q\n' "$POOL_NAME"
}

tb_pool_down() {
  tb_stop node-emulator
}
