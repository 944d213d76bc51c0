# A real Kubernetes control plane for the testbed: etcd, kube-apiserver, kube-controller-manager
# and kube-scheduler, built from pinned Go modules (testbed/go/etcd, testbed/go/kubernetes).
# Sourced by testbed/up and testbed/down after lib.sh, never run. Everything listens on 127.0.0.1.
#
#   tb_controlplane_up       build (once), make the PKI (once), start, wait for health, create the
#                            warmbuild namespace + CI service account, write the kubeconfigs
#   tb_controlplane_exports  print the export lines for KUBECONFIG, WARMBUILD_CI_KUBECONFIG, WARMBUILD_NAMESPACE
#   tb_controlplane_down     stop the four processes and the OIDC issuer (state in etcd is kept)
#
# The API server also verifies CI platforms' OIDC tokens: testbed/oidc_issuer.py stands in for
# GitHub's and GitLab's issuers on https://127.0.0.4:9443, and kube-apiserver runs the chart's own
# AuthenticationConfiguration (deploy/helm/warmbuild, apiServerAuthentication) rendered with the
# stand-in's issuer URLs and CA, so TokenReview returns the verified claims the scheduler reads.

KUBERNETES_VERSION="v1.37.2"   # must match testbed/go/kubernetes/go.mod
ETCD_VERSION="v3.7.3"          # must match testbed/go/etcd/go.mod
APISERVER_URL="https://127.0.0.1:6443"
ETCD_URL="http://127.0.0.1:2379"
ETCD_PEER_URL="http://127.0.0.1:2380"
KCM_HEALTH_URL="https://127.0.0.1:10257/healthz"
SCHEDULER_HEALTH_URL="https://127.0.0.1:10259/healthz"
# Nothing routes or connects to service IPs here (no kube-proxy); a loopback range keeps even a
# mistaken connection on this machine.
SERVICE_CIDR="127.0.128.0/24"
WARMBUILD_NAMESPACE="warmbuild"
CI_SERVICE_ACCOUNT="warmbuild-ci"
CI_TOKEN_SECONDS=$((7 * 24 * 3600))

CP_PKI="$WARMBUILD_TESTBED_DIR/pki"
CP_OIDC="$WARMBUILD_TESTBED_DIR/oidc"
OIDC_URL="https://127.0.0.4:9443"  # must match HOST and PORT in testbed/oidc_issuer.py
OIDC_AUDIENCE="warmbuild-scheduler"
OIDC_VENV="$WARMBUILD_CACHE/oidc-venv"
CP_KUBECONFIGS="$WARMBUILD_TESTBED_DIR/kubeconfig"

# tb_cp_binaries: build (once) and print the etcd and the Kubernetes binary directories, one a line.
tb_cp_binaries() {
  local etcd_dir k8s_dir
  grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION\$" "$TESTBED_SRC/go/etcd/go.mod" \
    || tb_die "ETCD_VERSION $ETCD_VERSION does not match testbed/go/etcd/go.mod"
  grep -q "k8s.io/kubernetes $KUBERNETES_VERSION\$" "$TESTBED_SRC/go/kubernetes/go.mod" \
    || tb_die "KUBERNETES_VERSION $KUBERNETES_VERSION does not match testbed/go/kubernetes/go.mod"
  etcd_dir="$(tb_go_build etcd "$ETCD_VERSION" "$TESTBED_SRC/go/etcd" ./cmd/etcd)" || exit 1
  local minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  local v pkg ldflags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    for v in "gitVersion=$KUBERNETES_VERSION" gitMajor=1 "gitMinor=$minor" gitTreeState=clean; do
      ldflags+=" -X $pkg.$v"
    done
  done
  k8s_dir="$(TB_GO_LDFLAGS="$ldflags" tb_go_build kubernetes "$KUBERNETES_VERSION" "$TESTBED_SRC/go/kubernetes" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler)" || exit 1
  printf '%s\n%s\n' "$etcd_dir" "$k8s_dir"
}

# tb_cp_cert NAME SUBJECT EXT_KEY_USAGE [SAN]: a key and a certificate signed by the testbed CA.
tb_cp_cert() {
  local name="$1" subject="$2" eku="$3" san="${4:-}"
  local ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=$eku"
  [[ -n "$san" ]] && ext+=$'\n'"subjectAltName=$san"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$CP_PKI/$name.key" -subj "$subject" 2>/dev/null \
    | openssl x509 -req -CA "$CP_PKI/ca.crt" -CAkey "$CP_PKI/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
        -days 3650 -extfile <(printf '%s\n' "$ext") -out "$CP_PKI/$name.crt" 2>/dev/null \
    || tb_die "could not make certificate $name"
}

# tb_cp_pki: make the CA, serving/client certificates and the service-account key pair, once.
tb_cp_pki() {
  [[ -f "$CP_PKI/.complete" ]] && return 0
  tb_log "generating control-plane PKI in $CP_PKI"
  rm -rf "$CP_PKI" && mkdir -p "$CP_PKI" && chmod 700 "$CP_PKI"
  openssl req -x509 -new -newkey rsa:2048 -nodes -days 3650 -subj "/CN=warmbuild-testbed-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -keyout "$CP_PKI/ca.key" -out "$CP_PKI/ca.crt" 2>/dev/null || tb_die "could not make the CA"
  tb_cp_cert apiserver "/CN=kube-apiserver" serverAuth \
    "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  tb_cp_cert admin "/O=system:masters/CN=warmbuild-testbed-admin" clientAuth
  tb_cp_cert kube-controller-manager "/CN=system:kube-controller-manager" clientAuth
  tb_cp_cert kube-scheduler "/CN=system:kube-scheduler" clientAuth
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$CP_PKI/sa.key" 2>/dev/null \
    && openssl pkey -in "$CP_PKI/sa.key" -pubout -out "$CP_PKI/sa.pub" 2>/dev/null \
    || tb_die "could not make the service-account key pair"
  chmod 600 "$CP_PKI"/*.key
  touch "$CP_PKI/.complete"
}

# tb_cp_write_file PATH: stdin to PATH, replaced atomically, mode 600.
tb_cp_write_file() {
  local path="$1"
  (umask 077 && cat >"$path.tmp") && mv "$path.tmp" "$path"
}

# tb_cp_kubeconfig USER [NAMESPACE] < USER_FIELDS: a self-contained kubeconfig for APISERVER_URL on stdout.
tb_cp_kubeconfig() {
  local user="$1" namespace="${2:-default}" fields
  fields="$(cat)"
  cat <<EOF
apiVersion: v1
kind: Config
clusters:
- name: warmbuild-testbed
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(base64 -w0 "$CP_PKI/ca.crt")
users:
- name: $user
  user:
$fields
contexts:
- name: $user@warmbuild-testbed
  context:
    cluster: warmbuild-testbed
    user: $user
    namespace: $namespace
current-context: $user@warmbuild-testbed
EOF
}

# tb_cp_cert_kubeconfig NAME: kubeconfig/NAME.yaml authenticating with pki/NAME.{crt,key}.
tb_cp_cert_kubeconfig() {
  local name="$1"
  printf '    client-certificate-data: %s\n    client-key-data: %s\n' \
      "$(base64 -w0 "$CP_PKI/$name.crt")" "$(base64 -w0 "$CP_PKI/$name.key")" \
    | tb_cp_kubeconfig "$name" | tb_cp_write_file "$CP_KUBECONFIGS/$name.yaml"
}

# tb_cp_admin_curl ARGS...: curl against the API server as the testbed admin.
tb_cp_admin_curl() {
  curl --noproxy '*' -sS --cacert "$CP_PKI/ca.crt" --cert "$CP_PKI/admin.crt" --key "$CP_PKI/admin.key" "$@"
}

# tb_cp_wait_http NAME URL SECONDS CURL_ARGS...: wait until URL answers 2xx while NAME stays alive.
tb_cp_wait_http() {
  local name="$1" url="$2" seconds="$3" i; shift 3
  for i in $(seq 1 $((seconds * 4))); do
    if curl --noproxy '*' -fsS -o /dev/null --max-time 2 "$@" "$url" 2>/dev/null; then return 0; fi
    tb_running "$name" || tb_die "$name exited during startup; see $WARMBUILD_TESTBED_DIR/logs/$name.log"
    sleep 0.25
  done
  tb_die "$name was not healthy at $url within ${seconds}s; see $WARMBUILD_TESTBED_DIR/logs/$name.log"
}

# tb_cp_apply API_PATH JSON: create or update one object with server-side apply, as admin.
tb_cp_apply() {
  local path="$1" body="$2" out code
  out="$(mktemp)"
  code="$(tb_cp_admin_curl -o "$out" -w '%{http_code}' -X PATCH \
    -H 'Content-Type: application/apply-patch+yaml' --data-binary "$body" \
    "$APISERVER_URL$path?fieldManager=warmbuild-testbed&force=true")"
  if [[ "$code" != 2* ]]; then
    tb_log "apply $path answered HTTP $code: $(cat "$out")"
    rm -f "$out"
    tb_die "could not apply $path"
  fi
  rm -f "$out"
}

# tb_cp_ci_objects: namespace, the CI service account, and the chart's own CI access: its Role and
# RoleBinding, the ValidatingAdmissionPolicy (+ binding) that admits only ephemeral builder pods from
# the CI identity, and the pool's history ConfigMap. They come from deploy/manifests/warmbuild.yaml
# (the chart rendered with its defaults: release and namespace "warmbuild", pool "default", which
# are the testbed's), so the testbed's CI identity has exactly what the chart grants.
TB_CI_CHART_OBJECTS="Role/warmbuild-ci RoleBinding/warmbuild-ci ConfigMap/warmbuild-history-default
ValidatingAdmissionPolicy/warmbuild-warmbuild-ephemeral-builders
ValidatingAdmissionPolicyBinding/warmbuild-warmbuild-ephemeral-builders
ValidatingAdmissionPolicy/warmbuild-warmbuild-ephemeral-builders-run-secrets
ValidatingAdmissionPolicyBinding/warmbuild-warmbuild-ephemeral-builders-run-secrets"

tb_cp_ci_objects() {
  local ns="$WARMBUILD_NAMESPACE" sa="$CI_SERVICE_ACCOUNT"
  tb_cp_apply "/api/v1/namespaces/$ns" \
    '{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"'"$ns"'"}}'
  tb_cp_apply "/api/v1/namespaces/$ns/serviceaccounts/$sa" \
    '{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"'"$sa"'","namespace":"'"$ns"'"}}'
  tb_cp_chart_objects "$TESTBED_SRC/../deploy/manifests/warmbuild.yaml" "$ns" $TB_CI_CHART_OBJECTS
}

# tb_cp_chart_objects FILE NAMESPACE KIND/NAME...: server-side apply the named documents of FILE
# (rendered manifests), as admin; fails when one of them is not in FILE.
tb_cp_chart_objects() {
  local file="$1" ns="$2" wanted path doc kind name applied=" "
  shift 2
  [[ -f "$file" ]] || tb_die "no $file: run deploy/render-manifests"
  while IFS= read -r -d '' doc; do
    kind="$(sed -n 's/^kind: //p' <<<"$doc" | head -n1)"
    name="$(awk '/^metadata:/ {m = 1; next} m && /^  name: / {print $2; exit} /^[^ #]/ {m = 0}' <<<"$doc")"
    for wanted in "$@"; do
      [[ "$wanted" == "$kind/$name" ]] || continue
      case "$kind" in
        Role) path="/apis/rbac.authorization.k8s.io/v1/namespaces/$ns/roles/$name" ;;
        RoleBinding) path="/apis/rbac.authorization.k8s.io/v1/namespaces/$ns/rolebindings/$name" ;;
        ConfigMap) path="/api/v1/namespaces/$ns/configmaps/$name" ;;
        ValidatingAdmissionPolicy) path="/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/$name" ;;
        ValidatingAdmissionPolicyBinding)
          path="/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings/$name" ;;
        *) tb_die "tb_cp_chart_objects: no API path for $kind" ;;
      esac
      tb_cp_apply "$path" "$doc"
      applied+="$kind/$name "
    done
  done < <(awk 'BEGIN {doc = ""} /^---$/ {printf "%s%c", doc, 0; doc = ""; next} {doc = doc $0 "\n"} END {printf "%s%c", doc, 0}' "$file")
  for wanted in "$@"; do
    [[ "$applied" == *" $wanted "* ]] || tb_die "$wanted is not in $file"
  done
}

# tb_cp_ci_kubeconfig: kubeconfig/ci.yaml with a TokenRequest token for the CI service account;
# kept while its token still works (a wiped etcd or new signing key makes a new one).
tb_cp_ci_kubeconfig() {
  local file="$CP_KUBECONFIGS/ci.yaml" token=""
  if [[ -f "$file" ]]; then
    token="$(sed -n 's/^ *token: //p' "$file")"
    if [[ -n "$token" ]] && curl --noproxy '*' -fsS -o /dev/null --cacert "$CP_PKI/ca.crt" \
        -H "Authorization: Bearer $token" \
        "$APISERVER_URL/apis/coordination.k8s.io/v1/namespaces/$WARMBUILD_NAMESPACE/leases?limit=1" 2>/dev/null; then
      return 0
    fi
    tb_log "the CI token in $file no longer works; minting a new one"
  fi
  token="$(tb_cp_admin_curl -f -X POST -H 'Content-Type: application/json' \
      --data-binary '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":'"$CI_TOKEN_SECONDS"'}}' \
      "$APISERVER_URL/api/v1/namespaces/$WARMBUILD_NAMESPACE/serviceaccounts/$CI_SERVICE_ACCOUNT/token" \
    | grep -o '"token": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/')"
  [[ -n "$token" ]] || tb_die "TokenRequest for $WARMBUILD_NAMESPACE/$CI_SERVICE_ACCOUNT failed"
  printf '    token: %s\n' "$token" \
    | tb_cp_kubeconfig "$CI_SERVICE_ACCOUNT" "$WARMBUILD_NAMESPACE" | tb_cp_write_file "$file"
  tb_log "wrote $file (service account $WARMBUILD_NAMESPACE/$CI_SERVICE_ACCOUNT)"
}

# tb_cp_oidc_venv: the issuer's own Python environment (cryptography), made once per version of
# testbed/config/oidc-requirements.txt.
tb_cp_oidc_venv() {
  local requirements="$TESTBED_SRC/config/oidc-requirements.txt" stamp="$OIDC_VENV/.requirements"
  if [[ -x "$OIDC_VENV/bin/python" ]] && cmp -s "$requirements" "$stamp"; then return 0; fi
  tb_log "creating $OIDC_VENV (the OIDC issuer's Python environment)"
  rm -rf "$OIDC_VENV"
  python3 -m venv "$OIDC_VENV" >&2 || tb_die "python3 -m venv $OIDC_VENV failed (is python3-venv installed?)"
  "$OIDC_VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$requirements" >&2 \
    || tb_die "installing $requirements into $OIDC_VENV failed"
  cp "$requirements" "$stamp"
}

# tb_cp_oidc_up: start the OIDC issuer stand-in and render the API server's authentication config
# from the chart (helm template, the apiServerAuthentication values) with its URLs and CA.
tb_cp_oidc_up() {
  tb_cp_oidc_venv
  "$OIDC_VENV/bin/python" "$TESTBED_SRC/oidc_issuer.py" --state-dir "$CP_OIDC" init \
    || tb_die "could not make the OIDC issuer's keys"
  tb_start oidc-issuer "$OIDC_VENV/bin/python" "$TESTBED_SRC/oidc_issuer.py" --state-dir "$CP_OIDC" serve
  tb_cp_wait_http oidc-issuer "$OIDC_URL/github/.well-known/openid-configuration" 30 --cacert "$CP_OIDC/ca.crt"
  local helm="${TB_HELM_BIN:-}" values
  [[ -x "$helm" ]] || helm="$(ls "$WARMBUILD_CACHE"/bin/helm-*/helm 2>/dev/null | tail -n1)"
  [[ -x "$helm" ]] || tb_die "no helm to render the API server's authentication config (testbed/helm.sh)"
  values="$(mktemp)"
  "$OIDC_VENV/bin/python" - "$CP_OIDC/ca.crt" "$OIDC_URL" "$OIDC_AUDIENCE" >"$values" <<'PY'
import json, sys
ca, url, audience = sys.argv[1], sys.argv[2], sys.argv[3]
pem = open(ca).read()
print(json.dumps({"apiServerAuthentication": {"enabled": True, "audiences": [audience],
    "github": {"enabled": True, "issuer": url + "/github", "certificateAuthority": pem},
    "gitlab": {"enabled": True, "issuer": url + "/gitlab", "certificateAuthority": pem}}}))
PY
  "$helm" template warmbuild "$TESTBED_SRC/../deploy/helm/warmbuild" --namespace "$WARMBUILD_NAMESPACE" \
      -f "$values" --show-only templates/apiserver-authentication.yaml 2>"$WARMBUILD_TESTBED_DIR/logs/helm-authn.log" \
    | "$OIDC_VENV/bin/python" -c 'import sys, json
doc = sys.stdin.read()
start = doc.index("authentication-config.yaml: |") if "authentication-config.yaml: |" in doc else -1
if start < 0: sys.exit("no authentication-config.yaml in the rendered chart")
lines = doc[start:].splitlines()[1:]
print("\n".join(line[4:] for line in lines if line.startswith("    ") or not line.strip()))' \
    | tb_cp_write_file "$CP_OIDC/authentication-config.yaml"
  rm -f "$values"
  grep -q "kind: AuthenticationConfiguration" "$CP_OIDC/authentication-config.yaml" \
    || tb_die "rendering the API server's authentication config failed; see $WARMBUILD_TESTBED_DIR/logs/helm-authn.log"
}

# tb_cp_start_etcd ETCD_BIN_DIR: start etcd (unless running) and wait until it is healthy.
# Also what testbed/fault uses to bring it back after a restart.
tb_cp_start_etcd() {
  local etcd_bin="$1"
  # A throwaway single-member etcd: no fsync, plain HTTP on loopback.
  tb_start etcd "$etcd_bin/etcd" \
    --name=warmbuild-testbed \
    --data-dir="$WARMBUILD_TESTBED_DIR/etcd" \
    --listen-client-urls="$ETCD_URL" --advertise-client-urls="$ETCD_URL" \
    --listen-peer-urls="$ETCD_PEER_URL" --initial-advertise-peer-urls="$ETCD_PEER_URL" \
    --initial-cluster="warmbuild-testbed=$ETCD_PEER_URL" \
    --unsafe-no-fsync=true
  tb_cp_wait_http etcd "$ETCD_URL/health" 60
}

# tb_cp_start_apiserver K8S_BIN_DIR: start kube-apiserver (unless running) and wait until it is ready.
tb_cp_start_apiserver() {
  local k8s_bin="$1"
  # The endpoint reconciler would publish the advertise address (loopback) as the endpoint of the
  # "kubernetes" Service; Endpoints may not hold loopback addresses, and nothing here uses it.
  tb_start kube-apiserver "$k8s_bin/kube-apiserver" \
    --etcd-servers="$ETCD_URL" \
    --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port=6443 \
    --tls-cert-file="$CP_PKI/apiserver.crt" --tls-private-key-file="$CP_PKI/apiserver.key" \
    --client-ca-file="$CP_PKI/ca.crt" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer="$APISERVER_URL" \
    --service-account-key-file="$CP_PKI/sa.pub" \
    --service-account-signing-key-file="$CP_PKI/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --endpoint-reconciler-type=none \
    --allow-privileged=true \
    --authentication-config="$CP_OIDC/authentication-config.yaml" \
    --profiling=false
  tb_cp_wait_http kube-apiserver "$APISERVER_URL/readyz" 180 \
    --cacert "$CP_PKI/ca.crt" --cert "$CP_PKI/admin.crt" --key "$CP_PKI/admin.key"
}

tb_controlplane_up() {
  local dirs etcd_bin k8s_bin started=$SECONDS
  dirs="$(tb_cp_binaries)" || exit 1
  { read -r etcd_bin; read -r k8s_bin; } <<<"$dirs"
  tb_cp_pki
  mkdir -p "$CP_KUBECONFIGS" "$WARMBUILD_TESTBED_DIR/etcd" && chmod 700 "$CP_KUBECONFIGS" "$WARMBUILD_TESTBED_DIR/etcd"
  local name
  for name in admin kube-controller-manager kube-scheduler; do tb_cp_cert_kubeconfig "$name"; done

  tb_cp_start_etcd "$etcd_bin"
  tb_cp_oidc_up
  tb_cp_start_apiserver "$k8s_bin"

  # Their health ports serve self-signed certificates; /healthz needs no credentials. Client
  # certificates are checked against the testbed CA without looking up the front-proxy CA
  # (there is none). The FlexVolume directory would otherwise be created under /usr/libexec.
  tb_start kube-controller-manager "$k8s_bin/kube-controller-manager" \
    --kubeconfig="$CP_KUBECONFIGS/kube-controller-manager.yaml" \
    --authentication-kubeconfig="$CP_KUBECONFIGS/kube-controller-manager.yaml" \
    --authorization-kubeconfig="$CP_KUBECONFIGS/kube-controller-manager.yaml" \
    --authentication-skip-lookup=true --client-ca-file="$CP_PKI/ca.crt" \
    --flex-volume-plugin-dir="$WARMBUILD_TESTBED_DIR/flexvolume" \
    --bind-address=127.0.0.1 --secure-port=10257 \
    --leader-elect=false \
    --controllers='*' \
    --use-service-account-credentials=true \
    --root-ca-file="$CP_PKI/ca.crt" \
    --service-account-private-key-file="$CP_PKI/sa.key" \
    --profiling=false
  tb_start kube-scheduler "$k8s_bin/kube-scheduler" \
    --kubeconfig="$CP_KUBECONFIGS/kube-scheduler.yaml" \
    --authentication-kubeconfig="$CP_KUBECONFIGS/kube-scheduler.yaml" \
    --authorization-kubeconfig="$CP_KUBECONFIGS/kube-scheduler.yaml" \
    --authentication-skip-lookup=true --client-ca-file="$CP_PKI/ca.crt" \
    --bind-address=127.0.0.1 --secure-port=10259 \
    --leader-elect=false \
    --profiling=false
  tb_cp_wait_http kube-controller-manager "$KCM_HEALTH_URL" 120 -k
  tb_cp_wait_http kube-scheduler "$SCHEDULER_HEALTH_URL" 120 -k

  tb_cp_ci_objects
  tb_cp_ci_kubeconfig
  tb_log "control plane $KUBERNETES_VERSION (etcd $ETCD_VERSION) ready at $APISERVER_URL in $((SECONDS - started))s"
}

tb_controlplane_exports() {
  printf 'export KUBECONFIG=%q\n' "$CP_KUBECONFIGS/admin.yaml"
  printf 'export WARMBUILD_CI_KUBECONFIG=%q\n' "$CP_KUBECONFIGS/ci.yaml"
  printf 'export WARMBUILD_NAMESPACE=%q\n' "$WARMBUILD_NAMESPACE"
  printf 'export WARMBUILD_OIDC_ISSUER=%q\n' "$OIDC_URL"
  printf 'export WARMBUILD_OIDC_CA=%q\n' "$CP_OIDC/ca.crt"
  printf 'export WARMBUILD_OIDC_PYTHON=%q\n' "$OIDC_VENV/bin/python"
}

tb_controlplane_down() {
  tb_stop kube-scheduler
  tb_stop kube-controller-manager
  tb_stop kube-apiserver
  tb_stop etcd
  tb_stop oidc-issuer
}
