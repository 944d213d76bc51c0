"""The `warmbuild` command: argument parsing and exit codes, nothing more."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from . import __version__
from .config import TlsFiles, build_request, parse_builder
from .errors import Cancelled, InputError, WarmbuildError
from .pipeline import run_build
from .report import Placement


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
        "--result-file", default=env("WARMBUILD_RESULT_FILE", "build-result.json"), help="where to write the result JSON"
    )
    parser.add_argument(
        "--builder", default=env("WARMBUILD_BUILDER"), help="buildkitd address, tcp://HOST:PORT (env WARMBUILD_BUILDER)"
    )
    parser.add_argument("--tls-ca", type=Path, default=env("WARMBUILD_TLS_CA"), help="CA certificate for the builder")
    parser.add_argument("--tls-cert", type=Path, default=env("WARMBUILD_TLS_CERT"), help="client certificate")
    parser.add_argument("--tls-key", type=Path, default=env("WARMBUILD_TLS_KEY"), help="client key")
    parser.add_argument("--tls-server-name", default=env("WARMBUILD_TLS_SERVER_NAME"), help="server name to verify")
    parser.add_argument("--buildctl", default=None, help="path to buildctl (env WARMBUILD_BUILDCTL, else PATH)")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="warmbuild", description="Fast image builds on cache-warm BuildKit pools.")
    parser.add_argument("--version", action="version", version=f"warmbuild {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    build = sub.add_parser("build", help="build (and push) an image", description="Build an image with BuildKit.")
    _add_build_arguments(build)
    return parser


def _tls_files(args: argparse.Namespace) -> TlsFiles | None:
    if not any((args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)):
        return None
    return TlsFiles(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name)


def command_build(args: argparse.Namespace) -> int:
    if not args.builder:
        raise InputError("no builder given: pass --builder tcp://HOST:PORT or set WARMBUILD_BUILDER")
    builder = parse_builder(args.builder, _tls_files(args))
    request = build_request(
        context=args.context,
        file=args.file,
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
    )
    run_build(request, builder, Placement(builder=builder.address, path="direct"), buildctl=args.buildctl)
    return 0


def _raise_cancelled(signum, _frame):
    raise Cancelled(signum, signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_cancelled)
    try:
        args = make_parser().parse_args(argv)
        if args.command == "build":
            return command_build(args)
        raise InputError(f"unknown command {args.command}")
    except WarmbuildError as exc:
        print(f"warmbuild: error: {exc.message}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
