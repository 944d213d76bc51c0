"""buildctl command lines, pure. Always an argv list: never passed through a shell."""

from __future__ import annotations

from pathlib import Path

from ..config import BuilderEndpoint, BuildRequest


def connection_args(buildctl: str, builder: BuilderEndpoint) -> list[str]:
    argv = [buildctl, "--addr", builder.address]
    tls = builder.tls
    if tls is not None:
        if tls.ca is not None:
            argv += ["--tlscacert", str(tls.ca)]
        if tls.cert is not None:
            argv += ["--tlscert", str(tls.cert), "--tlskey", str(tls.key)]
        if tls.server_name:
            argv += ["--tlsservername", tls.server_name]
    return argv


def image_output(request: BuildRequest) -> str | None:
    if not request.tags:
        return None
    names = ",".join(request.tags)
    # The name list contains commas, so it is quoted as BuildKit's CSV parser expects.
    return f'type=image,"name={names}",push={"true" if request.push else "false"}{request.compression_options()}'


def build_argv(buildctl: str, builder: BuilderEndpoint, request: BuildRequest, metadata_file: Path) -> list[str]:
    argv = connection_args(buildctl, builder)
    argv += [
        "build",
        "--progress=rawjson",
        "--frontend=dockerfile.v0",
        "--local", f"context={request.context}",
        "--local", f"dockerfile={request.dockerfile.parent}",
        "--opt", f"filename={request.dockerfile.name}",
        "--metadata-file", str(metadata_file),
    ]
    for key, value in request.build_args:
        argv += ["--opt", f"build-arg:{key}={value}"]
    for key, value in request.labels:
        argv += ["--opt", f"label:{key}={value}"]
    if request.target:
        argv += ["--opt", f"target={request.target}"]
    if request.platforms:
        argv += ["--opt", f"platform={','.join(request.platforms)}"]
    if request.no_cache:
        argv += ["--no-cache"]
    for secret in request.secrets:
        argv += ["--secret", secret.buildctl_value()]
    for cache in request.cache_from:
        argv += ["--import-cache", cache]
    for cache in request.cache_to:
        argv += ["--export-cache", cache]
    output = image_output(request)
    if output:
        argv += ["--output", output]
    return argv
