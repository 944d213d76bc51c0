# Helm for the chart tests (deploy/helm/warmbuild), built from the pinned helm.sh/helm/v4 Go module
# (testbed/go/helm: go.mod and go.sum only). Sourced by testbed/up after lib.sh, never run.
#
#   tb_helm_up       build helm once into $WARMBUILD_CACHE/bin/helm-$HELM_VERSION (a stat when warm)
#   tb_helm_exports  print the export line for WARMBUILD_HELM

HELM_VERSION="v4.3.2"  # must match testbed/go/helm/go.mod
TB_HELM_BIN=""

tb_helm_up() {
  grep -q "helm.sh/helm/v4 $HELM_VERSION\$" "$TESTBED_SRC/go/helm/go.mod" \
    || tb_die "HELM_VERSION $HELM_VERSION does not match testbed/go/helm/go.mod"
  local pkg=helm.sh/helm/v4/internal/version
  TB_HELM_BIN="$(TB_GO_LDFLAGS="-X $pkg.version=$HELM_VERSION -X $pkg.gitTreeState=clean" \
    tb_go_build helm "$HELM_VERSION" "$TESTBED_SRC/go/helm" helm.sh/helm/v4/cmd/helm)/helm" || exit 1
}

tb_helm_exports() {
  printf 'export WARMBUILD_HELM=%q\n' "$TB_HELM_BIN"
}
