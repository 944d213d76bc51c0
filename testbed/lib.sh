# Shared helpers for testbed/up and testbed/down. Sourced, never run.
# Everything human-readable goes to stderr: stdout of `up` is only `export` lines.

TESTBED_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Binaries built from pinned Go modules, kept across checkouts and sessions.
WARMBUILD_CACHE="${WARMBUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warmbuild}"
# Runtime state of one running testbed: PIDs, logs, data directories.
WARMBUILD_TESTBED_DIR="${WARMBUILD_TESTBED_DIR:-/var/tmp/warmbuild-testbed}"

BUILDKIT_VERSION="v0.34.2"
REGISTRY_ADDR="127.0.0.1:5000"
# The standalone warm builder used in direct mode; pool builders get 127.0.0.10 and up.
DIRECT_BUILDER_IP="127.0.0.2"
BUILDKITD_PORT=1234
BASE_IMAGE_NAME="library/python:3.11-slim"
BASE_IMAGE_SUITE="bookworm"

tb_log() { printf 'testbed: %s\n' "$*" >&2; }
tb_die() { printf 'testbed: error: %s\n' "$*" >&2; exit 1; }

tb_pidfile() { echo "$WARMBUILD_TESTBED_DIR/pids/$1.pid"; }

# A process is identified by its PID and its start time (field 22 of /proc/PID/stat), so that a
# PID reused after a reboot or a killed session is never mistaken for ours.
tb_proc_start() { awk '{print $22}' "/proc/$1/stat" 2>/dev/null; }

# tb_recorded_pid NAME: the PID `up` recorded for NAME, if that very process is still alive.
tb_recorded_pid() {
  local pidfile pid started
  pidfile="$(tb_pidfile "$1")"
  [[ -f "$pidfile" ]] || return 1
  read -r pid started <"$pidfile" || true
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ -z "$started" || "$(tb_proc_start "$pid")" == "$started" ]] || return 1
  echo "$pid"
}

# tb_running NAME: true when the process `up` recorded for NAME is alive.
tb_running() { tb_recorded_pid "$1" >/dev/null; }

# tb_start NAME CMD...: start CMD detached in its own session, log to logs/NAME.log.
tb_start() {
  local name="$1"; shift
  mkdir -p "$WARMBUILD_TESTBED_DIR/pids" "$WARMBUILD_TESTBED_DIR/logs"
  if tb_running "$name"; then
    tb_log "$name already running (pid $(tb_recorded_pid "$name"))"
    return 0
  fi
  # A daemon keeps only stdin/stdout/stderr: an inherited descriptor (a lock held by the caller,
  # `flock FILE testbed/up`) would otherwise stay held for as long as the daemon runs.
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd="${fd##*/}"
      ((fd > 2)) && eval "exec $fd>&-" 2>/dev/null
    done
    exec setsid "$@"
  ) </dev/null >>"$WARMBUILD_TESTBED_DIR/logs/$name.log" 2>&1 &
  echo "$! $(tb_proc_start $!)" >"$(tb_pidfile "$name")"
  tb_log "started $name (pid $!)"
}

# tb_stop NAME: TERM the recorded PID, KILL after 10 s, forget it.
tb_stop() {
  local name="$1" pidfile pid i
  pidfile="$(tb_pidfile "$name")"
  [[ -f "$pidfile" ]] || return 0
  if pid="$(tb_recorded_pid "$name")"; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      tb_log "$name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    tb_log "stopped $name (pid $pid)"
  fi
  rm -f "$pidfile"
}

# tb_wait_tcp HOST PORT SECONDS NAME: wait until something accepts connections.
tb_wait_tcp() {
  local host="$1" port="$2" seconds="$3" name="$4" i
  for i in $(seq 1 $((seconds * 5))); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
    if ! tb_running "$name"; then
      tb_die "$name exited during startup; see $WARMBUILD_TESTBED_DIR/logs/$name.log"
    fi
    sleep 0.2
  done
  tb_die "$name did not listen on $host:$port within ${seconds}s; see $WARMBUILD_TESTBED_DIR/logs/$name.log"
}

# tb_go_build NAME VERSION MODULE_DIR PKG...: build PKGs from the pinned helper module
# once into $WARMBUILD_CACHE/bin/NAME-VERSION and print that directory.
tb_go_build() {
  local name="$1" version="$2" moddir="$3"; shift 3
  local out="$WARMBUILD_CACHE/bin/$name-$version" pkg missing=0
  for pkg in "$@"; do [[ -x "$out/$(basename "$pkg")" ]] || missing=1; done
  if [[ $missing == 1 ]]; then
    command -v go >/dev/null || tb_die "go is not installed; it is needed once to build $name $version"
    tb_log "building $name $version from pinned Go modules (once; cached in $out)"
    local started=$SECONDS
    rm -rf "$out.partial" && mkdir -p "$out.partial"
    (cd "$moddir" && GOFLAGS=-mod=readonly CGO_ENABLED=0 go build -trimpath -ldflags "-s -w ${TB_GO_LDFLAGS:-}" \
      -o "$out.partial/" "$@") >&2 || tb_die "building $name $version failed"
    rm -rf "$out" && mv "$out.partial" "$out"
    tb_log "built $name $version in $((SECONDS - started))s"
  fi
  echo "$out"
}
