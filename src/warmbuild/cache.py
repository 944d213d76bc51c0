"""The registry cache: where it lives and which import/export options a build gets (pure).

Warm builders keep their cache on local disk; the registry cache is what an ephemeral builder, or
a warm builder that is not the workload's affine one (spill), starts from. Warm builds refresh it
per `--cache-export`: `auto` exports when the build pushes — the layers are then already in the
same repository, so the export costs a manifest and little else (measured in docs/architecture.md).
Untrusted builds import only: they never write a cache others read — neither warmbuild's registry
cache nor one the user names with `--cache-to` (`exports_allowed` drops those, and the pipeline
says so). The options are `CacheSpec`s; `buildkit/command.py` writes them in buildctl's syntax.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import IMAGE_REFERENCE, CacheSpec, Compression

CACHE_EXPORT_POLICIES = ("auto", "always", "never")


@dataclass(frozen=True)
class CacheOptions:
    imports: tuple[CacheSpec, ...]
    exports: tuple[CacheSpec, ...]


def default_cache_ref(tags: tuple[str, ...]) -> str | None:
    """`<repository of the first tag>:buildcache`, or None without tags."""
    if not tags:
        return None
    match = IMAGE_REFERENCE.match(tags[0])
    if match is None:
        return None
    domain = match.group("domain")
    repository = f"{domain}/{match.group('path')}" if domain else match.group("path")
    return f"{repository}:buildcache"


def cache_options(
    path: str,
    cache_ref: str | None,
    export_policy: str,
    push: bool,
    untrusted: bool,
    compression: Compression = Compression(),
) -> CacheOptions:
    """`compression` is the image's (BuildRequest.compression): the cache's layers are then the
    blobs the image push already made, not a second compression of each."""
    if cache_ref is None:
        return CacheOptions((), ())
    registry_import = (CacheSpec.registry_import(cache_ref),)
    # The export ignores errors: a cache that could not be written is a warning, never a failed build.
    registry_export = (CacheSpec.registry_export(cache_ref, compression),)
    if untrusted:
        return CacheOptions(registry_import, ())
    if path in ("ephemeral", "spill"):
        return CacheOptions(registry_import, registry_export)
    if export_policy == "always" or (export_policy == "auto" and push):
        return CacheOptions((), registry_export)
    return CacheOptions((), ())


def exports_allowed(
    requested: tuple[CacheSpec, ...], untrusted: bool
) -> tuple[tuple[CacheSpec, ...], tuple[CacheSpec, ...]]:
    """(kept, dropped) of the user's `--cache-to` exports. An untrusted build keeps none, whatever
    the backend: a cache it wrote would be imported by trusted builds, layers and all."""
    if untrusted:
        return (), tuple(requested)
    return tuple(requested), ()
