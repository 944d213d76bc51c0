"""CI inputs (GitHub action inputs, GitLab component inputs) → the `warmbuild build` command line.

One mapping for every platform, named like docker/build-push-action where the meaning is the same,
so a CI front door is the CLI with other spelling, never a second copy of the build logic. Pure:
values in, argv (and the environment the secrets need) out; a bad value is one `InputError` line
that names the input.

List inputs follow build-push-action: `tags`, `platforms` and `secret-envs` split on newlines and
commas; the others (whose items may contain commas) on newlines only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import InputError
from ..pool.policy import FALLBACKS

TRUE_VALUES = ("true", "True", "TRUE")
FALSE_VALUES = ("false", "False", "FALSE")

# Input name → CLI flag, for inputs that pass through unchanged.
SINGLE_FLAGS = {
    "file": "--file",
    "target": "--target",
    "pool": "--pool",
    "builder": "--builder",
    "namespace": "--namespace",
    "cache-key": "--cache-key",
    "kube-context": "--kube-context",
    "scheduler": "--scheduler",
}
LIST_FLAGS = {  # name → (flag, also split on commas)
    "tags": ("--tag", True),
    "platforms": ("--platform", True),
    "build-args": ("--build-arg", False),
    "labels": ("--label", False),
}
CACHE_FLAGS = {"cache-from": "--cache-from", "cache-to": "--cache-to"}
BOOLEAN_FLAGS = {"push": "--push", "no-cache": "--no-cache"}
SECRET_INPUTS = ("secrets", "secret-envs", "secret-files")
# Every input build_invocation reads.
BUILD_INPUTS = (
    "context",
    *SINGLE_FLAGS,
    *LIST_FLAGS,
    *CACHE_FLAGS,
    *BOOLEAN_FLAGS,
    *SECRET_INPUTS,
    "max-wait",
    "fallback",
    "retries",
)
SECRET_ENV_PREFIX = "WARMBUILD_SECRET_"


@dataclass(frozen=True)
class BuildInvocation:
    context: str
    flags: tuple[str, ...]  # `--flag=value` items: a value that starts with '-' stays a value
    env: tuple[tuple[str, str], ...] = ()  # variables the process must have (inline secret values)
    secret_values: tuple[str, ...] = ()  # to be masked in logs

    def argv(self, *extra_flags: str) -> list[str]:
        """The `warmbuild` argv: build, the flags, the caller's own flags, then the context."""
        return ["build", *self.flags, *extra_flags, "--", self.context]


def split_list(value: str, commas: bool) -> list[str]:
    parts = re.split(r"[\n,]" if commas else r"\n", value)
    return [p.strip() for p in parts if p.strip()]


def parse_boolean(name: str, value: str, default: bool = False) -> bool:
    value = value.strip()
    if not value:
        return default
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    raise InputError(f"input '{name}' is '{value}': write true or false")


def _pair(name: str, number: int, item: str, what: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip() or not value.strip():
        # Never echo the item: in `secrets` it may be a secret value.
        raise InputError(f"input '{name}', item {number + 1}: write {what}")
    return key.strip(), value.strip()


def build_invocation(inputs: Mapping[str, str]) -> BuildInvocation:
    """Map input values (missing or empty = not given) to `warmbuild build` arguments."""
    get = lambda name: (inputs.get(name) or "").strip()  # noqa: E731
    argv: list[str] = []
    for name, flag in SINGLE_FLAGS.items():
        if get(name):
            argv.append(f"{flag}={get(name)}")
    for name, (flag, commas) in LIST_FLAGS.items():
        for item in split_list(get(name), commas):
            argv.append(f"{flag}={item}")
    for name, flag in CACHE_FLAGS.items():
        for item in split_list(get(name), commas=False):
            argv.append(f"{flag}={item}")  # a bare reference means the registry cache there too
    for name, flag in BOOLEAN_FLAGS.items():
        if parse_boolean(name, get(name)):
            argv.append(flag)
    if get("max-wait"):
        try:
            seconds = float(get("max-wait"))
        except ValueError:
            raise InputError(f"input 'max-wait' is '{get('max-wait')}': write a number of seconds, e.g. 60") from None
        argv.append(f"--max-wait={seconds:g}")
    if get("retries"):
        if not get("retries").isdigit():
            raise InputError(f"input 'retries' is '{get('retries')}': write a whole number, e.g. 1 (0: never retry)")
        argv.append(f"--retries={int(get('retries'))}")
    if get("fallback"):
        if get("fallback") not in FALLBACKS:
            raise InputError(f"input 'fallback' is '{get('fallback')}': write one of {', '.join(FALLBACKS)}")
        argv.append(f"--fallback={get('fallback')}")

    env: list[tuple[str, str]] = []
    values: list[str] = []
    for number, item in enumerate(split_list(get("secret-envs"), commas=True)):
        secret_id, variable = _pair("secret-envs", number, item, "id=ENV_VARIABLE")
        argv.append(f"--secret=id={secret_id},env={variable}")
    for number, item in enumerate(split_list(get("secret-files"), commas=False)):
        secret_id, path = _pair("secret-files", number, item, "id=PATH")
        argv.append(f"--secret=id={secret_id},src={path}")
    # Inline values (build-push-action's `secrets`): handed to buildctl through its environment,
    # never its command line, which other processes on the runner can read.
    for number, item in enumerate(split_list(inputs.get("secrets") or "", commas=False)):
        secret_id, value = _pair("secrets", number, item, "id=VALUE")
        variable = f"{SECRET_ENV_PREFIX}{number}"
        env.append((variable, value))
        values.append(value)
        argv.append(f"--secret=id={secret_id},env={variable}")
    return BuildInvocation(get("context") or ".", tuple(argv), tuple(env), tuple(values))
