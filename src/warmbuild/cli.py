"""The `warmbuild` command: argument parsing and exit codes, nothing more."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .cache import CACHE_EXPORT_POLICIES
from .config import COMPRESSION_LEVELS, PoolFlags, TlsFiles, build_request, check_pool_flags
from .doctor.command import add_doctor_arguments, command_doctor, uv_dockerfile
from .errors import InputError, ToolMissing, WarmbuildError
from .gateway.names import DEFAULT_DOMAIN
from .kube.client import connect
from .pipeline import plan_direct_build, plan_pool_build, run_build, run_pool_build
from .pool.broker import DirectLeases
from .pool.drain import add_drain_arguments, command_drain
from .pool.ephemeral import delete_ephemeral_pod
from .pool.gc import collect_garbage
from .pool.history import add_history_commands, command_history_export
from .pool.leases import release_slot
from .pool.policy import FALLBACKS
from .pool.state import read_state, remove_state, state_file_path
from .pool.status import read_pool_status, render_status_table, status_to_dict
from .report import Placement
from .signals import install_cancel_handlers, signals_deferred
from .simulate.commands import COMMANDS as SIMULATION_COMMANDS
from .simulate.commands import add_commands as add_simulation_commands
from .simulate.commands import run_command as run_simulation_command

if TYPE_CHECKING:
    from .scheduler.client import SchedulerClient


class _Parser(argparse.ArgumentParser):
    """argparse, but bad usage is one line and exit 2 like every other input error."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise InputError(f"{message} (see 'warmbuild {self.prog.split()[-1]} --help')" if " " in self.prog else message)


def _add_build_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("context", nargs="?", default=".", help="build context directory (default: .)")
    parser.add_argument("-f", "--file", help="Dockerfile path (default: CONTEXT/Dockerfile)")
    parser.add_argument("-t", "--tag", dest="tags", action="append", default=[], help="image name:tag; repeatable")
    parser.add_argument("--build-arg", dest="build_args", action="append", default=[], help="NAME=VALUE; repeatable")
    parser.add_argument(
        "--secret", dest="secrets", action="append", default=[], help="id=NAME,src=PATH or id=NAME,env=VAR; repeatable"
    )
    parser.add_argument("--target", help="build stage to stop at")
    parser.add_argument("--platform", dest="platforms", action="append", default=[], help="os/arch; repeatable")
    parser.add_argument("--label", dest="labels", action="append", default=[], help="KEY=VALUE image label; repeatable")
    push = parser.add_mutually_exclusive_group()
    push.add_argument("--push", dest="push", action="store_true", default=False, help="push the tags to their registry")
    push.add_argument("--no-push", dest="push", action="store_false", help="build without pushing (default)")
    parser.add_argument("--cache-from", action="append", default=[], help="BuildKit --import-cache value; repeatable")
    parser.add_argument("--cache-to", action="append", default=[], help="BuildKit --export-cache value; repeatable")
    parser.add_argument("--no-cache", action="store_true", help="do not use any cache for this build")
    parser.add_argument(
        "--uv",
        action="store_true",
        help="build with pip install rewritten to uv + a cache mount (see warmbuild doctor)",
    )
    parser.add_argument(
        "--compression",
        choices=tuple(COMPRESSION_LEVELS),
        default=env("WARMBUILD_COMPRESSION", "gzip"),
        help="layer compression of the image and of the registry cache warmbuild writes (env WARMBUILD_COMPRESSION; "
        "default gzip; zstd exports large layers several times faster, pulls need Docker 23+ / containerd 1.5+)",
    )
    parser.add_argument(
        "--compression-level",
        type=int,
        default=env("WARMBUILD_COMPRESSION_LEVEL"),  # a string default goes through type=int too
        help="gzip 0–9, zstd 0–22 (env WARMBUILD_COMPRESSION_LEVEL; default: BuildKit's)",
    )
    parser.add_argument(
        "--result-file",
        default=env("WARMBUILD_RESULT_FILE", "build-result.json"),
        help="where to write the result JSON",
    )
    _add_builder_arguments(parser)
    _add_pool_arguments(parser)
    _add_cluster_arguments(parser)
    _add_scheduler_arguments(parser)


def _add_builder_arguments(parser: argparse.ArgumentParser) -> None:
    """--builder and its TLS files: a direct build, or the client side of a pool build's mTLS."""
    env = os.environ.get
    parser.add_argument("--builder", help="buildkitd address, tcp://HOST:PORT (env WARMBUILD_BUILDER)")
    parser.add_argument("--tls-ca", type=Path, default=env("WARMBUILD_TLS_CA"), help="CA certificate for the builder")
    parser.add_argument("--tls-cert", type=Path, default=env("WARMBUILD_TLS_CERT"), help="client certificate")
    parser.add_argument("--tls-key", type=Path, default=env("WARMBUILD_TLS_KEY"), help="client key")
    parser.add_argument("--tls-server-name", default=env("WARMBUILD_TLS_SERVER_NAME"), help="server name to verify")
    parser.add_argument("--buildctl", default=None, help="path to buildctl (env WARMBUILD_BUILDCTL, else PATH)")


def _add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    pool = parser.add_argument_group("pool (instead of --builder)")
    pool.add_argument("--pool", help="builder pool name (env WARMBUILD_POOL; WARMBUILD_BUILDER wins if both are set)")
    pool.add_argument(
        "--cache-key", default=env("WARMBUILD_CACHE_KEY"), help="workload key; default: repository + Dockerfile path"
    )
    pool.add_argument(
        "--cache-key-target",
        action="store_true",
        default=env("WARMBUILD_CACHE_KEY_TARGET", "").lower() in ("1", "true", "yes"),
        help="add --target to the default workload key, so each target keeps its own builder "
        "(env WARMBUILD_CACHE_KEY_TARGET; default: targets of one Dockerfile share a builder and its layers)",
    )
    pool.add_argument(
        "--max-wait",
        type=float,
        default=float(env("WARMBUILD_MAX_WAIT", "60")),
        help="seconds to wait for the affine builder before spilling (default 60)",
    )
    pool.add_argument(
        "--retries",
        type=int,
        default=env("WARMBUILD_RETRIES", "1"),  # a string: argparse converts it, refusing a bad value with exit 2
        help="times a build that lost its builder before pushing runs again on another builder (default 1)",
    )
    pool.add_argument(
        "--lease-seconds",
        type=int,
        default=int(env("WARMBUILD_LEASE_SECONDS", "15")),
        help="slot lease duration (default 15)",
    )
    pool.add_argument(
        "--fallback",
        choices=FALLBACKS,
        default=env("WARMBUILD_FALLBACK", "auto"),
        help="when the affine builder is busy: auto (least expected time), wait, ephemeral, fail",
    )
    trust = pool.add_mutually_exclusive_group()
    trust.add_argument(
        "--untrusted",
        dest="untrusted",
        action="store_true",
        default=None,
        help="never write a shared cache: ephemeral builder, registry cache import only (default for fork pull requests)",
    )
    trust.add_argument(
        "--trusted",
        dest="untrusted",
        action="store_false",
        help="treat the build as trusted even if it comes from a fork",
    )
    pool.add_argument(
        "--cache-ref",
        default=env("WARMBUILD_CACHE_REF"),
        help="registry cache ref (default: <first tag's repository>:buildcache)",
    )
    pool.add_argument(
        "--cache-export",
        choices=CACHE_EXPORT_POLICIES,
        default=env("WARMBUILD_CACHE_EXPORT", "auto"),
        help="warm builds refresh the registry cache: auto (when pushing), always, never",
    )
    pool.add_argument(
        "--ephemeral-config",
        default=env("WARMBUILD_EPHEMERAL_CONFIG"),
        help="YAML: image, rootless, resources, nodeSelector, tolerations, affinity, imagePullSecrets, "
        "serviceAccountName, labels, annotations, activeDeadlineSeconds, startupTimeoutSeconds",
    )
    pool.add_argument(
        "--ephemeral-image", default=env("WARMBUILD_EPHEMERAL_IMAGE"), help="BuildKit image for ephemeral builders"
    )
    pool.add_argument(
        "--ephemeral-timeout",
        type=float,
        default=None,
        help="seconds an ephemeral builder may take to become ready (default 120)",
    )


def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--namespace",
        default=env("WARMBUILD_NAMESPACE", "warmbuild"),
        help="namespace of the pool (env WARMBUILD_NAMESPACE)",
    )
    parser.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)"
    )
    parser.add_argument("--kube-context", dest="kube_context", default=None, help="kubeconfig context")
    parser.add_argument(
        "--state-file",
        default=None,
        help="where the held slot is recorded for 'warmbuild release' (env WARMBUILD_STATE_FILE)",
    )


def _add_scheduler_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    group = parser.add_argument_group("scheduler (instead of Lease permissions)")
    group.add_argument(
        "--scheduler",
        default=env("WARMBUILD_SCHEDULER"),
        help="scheduler URL(s), https://HOST:PORT, comma-separated replicas (env WARMBUILD_SCHEDULER)",
    )
    group.add_argument(
        "--scheduler-token", default=None, help="bearer token (prefer env WARMBUILD_SCHEDULER_TOKEN or a token file)"
    )
    group.add_argument(
        "--scheduler-token-file",
        default=None,
        help="file with the bearer token (env WARMBUILD_SCHEDULER_TOKEN_FILE; in a pod: its service account token)",
    )
    group.add_argument(
        "--scheduler-ca",
        default=env("WARMBUILD_SCHEDULER_CA"),
        help="CA certificate of the scheduler (env WARMBUILD_SCHEDULER_CA)",
    )


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="warmbuild", description="Fast image builds on cache-warm BuildKit pools.")
    parser.add_argument("--version", action="version", version=f"warmbuild {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    build = sub.add_parser("build", help="build (and push) an image", description="Build an image with BuildKit.")
    _add_build_arguments(build)
    gc = sub.add_parser("gc", help="delete orphaned ephemeral builders and leases of builders that are gone")
    gc.add_argument("--pool", default=None, help="only this pool's ephemeral builders (default: all)")
    gc.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    _add_cluster_arguments(gc)
    release = sub.add_parser("release", help="release the slot a build recorded in its state file (CI post steps)")
    _add_cluster_arguments(release)
    _add_scheduler_arguments(release)
    doctor = sub.add_parser(
        "doctor", help="advise on a Dockerfile: what costs build time, and --fix for the safe rewrites"
    )
    add_doctor_arguments(doctor)
    drain = sub.add_parser("drain", help="builder preStop hook: stop taking builds, wait until its slots are released")
    add_drain_arguments(drain)
    pool = sub.add_parser("pool", help="inspect a builder pool")
    pool_sub = pool.add_subparsers(dest="pool_command", required=True, parser_class=_Parser)
    status = pool_sub.add_parser("status", help="builders, slots, holders and lease ages")
    status.add_argument("--pool", default=os.environ.get("WARMBUILD_POOL", "default"), help="pool name")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_cluster_arguments(status)
    scheduler = sub.add_parser(
        "scheduler", help="serve the scheduler: slots over HTTPS, metrics (needs warmbuild[scheduler])"
    )
    scheduler.add_argument(
        "--listen", default="127.0.0.1:8443", help="HOST:PORT to serve HTTPS on (default 127.0.0.1:8443)"
    )
    scheduler.add_argument("--tls-cert", required=True, help="server certificate (PEM)")
    scheduler.add_argument("--tls-key", required=True, help="server key (PEM)")
    scheduler.add_argument("--auth-config", required=True, help="YAML: which users/groups may use which pools")
    scheduler.add_argument(
        "--namespace", default=os.environ.get("WARMBUILD_NAMESPACE", "warmbuild"), help="namespace of the pools"
    )
    scheduler.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)"
    )
    scheduler.add_argument("--kube-context", dest="kube_context", default=None, help="kubeconfig context")
    scheduler.add_argument(
        "--max-poll-seconds",
        type=float,
        default=30.0,
        help="longest a request waits for a slot before the client polls again (default 30)",
    )
    scheduler.add_argument(
        "--max-concurrent", type=int, default=128, help="requests served at once, long-polls included (default 128)"
    )
    scheduler.add_argument(
        "--no-pool-watch",
        dest="pool_watch",
        action="store_false",
        help="waiting acquirers list the pool every round instead of sharing one watch per pool",
    )
    gateway = scheduler.add_argument_group("gateway (runners outside the cluster; docs/deploy.md)")
    gateway.add_argument("--gateway-address", default="", help="HOST:PORT of the gateway, as runners reach it")
    gateway.add_argument("--gateway-ca", default="", help="CA certificate that verifies the gateway (sent to runners)")
    gateway.add_argument("--grant-ca-cert", default="", help="the grant CA's certificate (PEM)")
    gateway.add_argument("--grant-ca-key", default="", help="the grant CA's key (PEM): signs grant certificates")
    gateway.add_argument(
        "--gateway-domain",
        default="",
        help="runners ask the gateway for BUILDER.DOMAIN (default builders.warmbuild.internal)",
    )
    sync = sub.add_parser(
        "gateway-sync", help="keep the gateway's map of builder names to pod addresses current (a sidecar)"
    )
    sync.add_argument("--pool", default=os.environ.get("WARMBUILD_POOL", "default"), help="pool name")
    sync.add_argument("--map-file", required=True, help="HAProxy map file to keep current (written atomically)")
    sync.add_argument("--runtime-socket", default="", help="HAProxy's admin socket: updates the running map too")
    sync.add_argument("--once", action="store_true", help="write the map once and exit (an init container)")
    sync.add_argument(
        "--gateway-domain", default="", help="map keys are BUILDER.DOMAIN (default builders.warmbuild.internal)"
    )
    _add_cluster_arguments(sync)
    scheduler.add_argument(
        "--ephemeral-config",
        default=None,
        help="YAML of ephemeral builder settings (as for build): the scheduler then starts ephemeral "
        "builders for untrusted callers (without it they are refused)",
    )
    add_history_commands(sub, _add_cluster_arguments)  # history export
    add_simulation_commands(sub)  # simulate, plan
    return parser


def _tls_files(args: argparse.Namespace) -> TlsFiles | None:
    if not any((args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)):
        return None
    return TlsFiles(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name)


def command_build(args: argparse.Namespace) -> int:
    if args.builder and args.pool:
        raise InputError("give --builder or --pool, not both")
    builder_source = "--builder"
    if not args.builder and not args.pool:
        builder_source = "WARMBUILD_BUILDER"
        args.builder = os.environ.get("WARMBUILD_BUILDER") or None
        args.pool = None if args.builder else os.environ.get("WARMBUILD_POOL") or None
    if not args.builder and not args.pool:
        raise InputError(
            "no builder given: pass --pool NAME or --builder tcp://HOST:PORT (or set WARMBUILD_POOL / WARMBUILD_BUILDER)"
        )
    with uv_dockerfile(args.uv, args.context, args.file) as rewritten:
        request = _build_request(args, rewritten)
        if args.pool:
            named = Path(args.file or Path(args.context) / "Dockerfile").expanduser() if rewritten else None
            options = plan_pool_build(request, _pool_flags(args, named))
            broker = _scheduler_client(args) or DirectLeases(connect(args.kubeconfig, args.kube_context))
            run_pool_build(request, options, broker)
            return 0
        builder = plan_direct_build(args.builder, _tls_files(args), args.untrusted, builder_source)
        run_build(request, builder, Placement(builder=builder.address, path="direct"), buildctl=args.buildctl)
        return 0


def _build_request(args: argparse.Namespace, rewritten: Path | None):
    return build_request(
        context=args.context,
        file=str(rewritten) if rewritten else args.file,
        tags=args.tags,
        build_args=args.build_args,
        secrets=args.secrets,
        target=args.target,
        platforms=args.platforms,
        labels=args.labels,
        push=args.push,
        cache_from=args.cache_from,
        cache_to=args.cache_to,
        no_cache=args.no_cache,
        result_file=args.result_file,
        compression=args.compression,
        compression_level=args.compression_level,
    )


def _pool_flags(args: argparse.Namespace, named_dockerfile: Path | None) -> PoolFlags:
    return check_pool_flags(
        PoolFlags(
            pool=args.pool,
            namespace=args.namespace,
            cache_key=args.cache_key,
            key_by_target=args.cache_key_target,
            named_dockerfile=named_dockerfile,
            max_wait_seconds=args.max_wait,
            lease_seconds=args.lease_seconds,
            fallback=args.fallback,
            untrusted=args.untrusted,
            cache_ref=args.cache_ref,
            cache_export=args.cache_export,
            ephemeral_config=args.ephemeral_config,
            ephemeral_image=args.ephemeral_image,
            ephemeral_timeout=args.ephemeral_timeout,
            kubeconfig=args.kubeconfig,
            kube_context=args.kube_context,
            state_file=args.state_file,
            tls=_tls_files(args),
            buildctl=args.buildctl,
            retries=args.retries,
        )
    )


def _scheduler_client(args: argparse.Namespace) -> SchedulerClient | None:
    if not args.scheduler:
        return None
    from .scheduler.client import SchedulerClient, scheduler_options  # only for --scheduler: keeps start-up quick

    return SchedulerClient(
        scheduler_options(args.scheduler, args.scheduler_token, args.scheduler_token_file, args.scheduler_ca)
    )


def command_release(args: argparse.Namespace) -> int:
    path = state_file_path(args.state_file)
    state = read_state(path)
    if state is None or not state.lease:
        print(f"warmbuild: nothing to release ({path} holds no slot)", file=sys.stderr)
        return 0
    scheduler = _scheduler_client(args) if not state.ephemeral_pod else None
    if scheduler is not None:
        with signals_deferred():
            released = scheduler.release_lease(state.lease, state.holder, state.release_token or "")
            remove_state(path)
        print(
            f"warmbuild: {'released' if released else 'already free:'} slot {state.lease} (scheduler)", file=sys.stderr
        )
        return 0
    client = connect(args.kubeconfig or state.kubeconfig, args.kube_context or state.context)
    with signals_deferred():  # a post step may get a signal too: finish the release first
        if state.ephemeral_pod:
            delete_ephemeral_pod(client, state.namespace, state.ephemeral_pod)
            print(f"warmbuild: deleted ephemeral builder {state.ephemeral_pod}", file=sys.stderr)
            released = True
        else:
            released = release_slot(client, state.namespace, state.lease, state.holder)
        remove_state(path)
    if not state.ephemeral_pod:
        print(f"warmbuild: {'released' if released else 'already free:'} slot {state.lease}", file=sys.stderr)
    return 0


def command_gc(args: argparse.Namespace) -> int:
    client = connect(args.kubeconfig, args.kube_context)
    collected = collect_garbage(client, args.namespace, args.pool, args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    for item in collected:
        print(f"warmbuild gc: {verb} {item.kind} {item.name}: {item.reason}", file=sys.stderr)
    if not collected:
        print("warmbuild gc: nothing to collect", file=sys.stderr)
    return 0


def command_pool_status(args: argparse.Namespace) -> int:
    client = connect(args.kubeconfig, args.kube_context)
    status = read_pool_status(client, args.namespace, args.pool)
    print(json.dumps(status_to_dict(status), indent=2) if args.json else render_status_table(status))
    return 0


def command_scheduler(args: argparse.Namespace) -> int:
    try:
        from .scheduler.app import serve
        from .scheduler.gateway import GatewayOptions
    except ImportError as exc:
        raise ToolMissing(f"the scheduler needs its extra: pip install 'warmbuild[scheduler]' ({exc})") from None
    serve(
        args.listen,
        args.tls_cert,
        args.tls_key,
        args.namespace,
        args.auth_config,
        args.kubeconfig,
        args.kube_context,
        args.max_poll_seconds,
        args.max_concurrent,
        args.pool_watch,
        args.ephemeral_config,
        gateway=GatewayOptions(
            address=args.gateway_address,
            ca_file=args.gateway_ca,
            grant_ca_cert=args.grant_ca_cert,
            grant_ca_key=args.grant_ca_key,
            domain=args.gateway_domain,
        ),
    )
    return 0


def command_gateway_sync(args: argparse.Namespace) -> int:
    from .gateway.sync import SyncOptions, run_sync

    client = connect(args.kubeconfig, args.kube_context)
    run_sync(
        client,
        SyncOptions(
            namespace=args.namespace,
            pool=args.pool,
            map_file=Path(args.map_file),
            runtime_socket=args.runtime_socket or None,
            domain=args.gateway_domain or DEFAULT_DOMAIN,
        ),
        once=args.once,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    install_cancel_handlers()  # SIGINT/SIGTERM/SIGHUP raise Cancelled; cleanup defers them (signals.py)
    try:
        args = make_parser().parse_args(argv)
        if args.command == "build":
            return command_build(args)
        if args.command == "doctor":
            return command_doctor(args)
        if args.command == "gc":
            return command_gc(args)
        if args.command == "release":
            return command_release(args)
        if args.command == "drain":
            return command_drain(args)
        if args.command == "pool":
            return command_pool_status(args)
        if args.command == "scheduler":
            return command_scheduler(args)
        if args.command == "gateway-sync":
            return command_gateway_sync(args)
        if args.command == "history":
            return command_history_export(args)
        if args.command in SIMULATION_COMMANDS:
            return run_simulation_command(args)
        raise InputError(f"unknown command {args.command}")
    except WarmbuildError as exc:
        print(f"warmbuild: error: {exc.message}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
