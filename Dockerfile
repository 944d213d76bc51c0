# The warmbuild step image: the CLI, its CI entry points and a pinned buildctl, nothing else.
#
#   docker build -t warmbuild:0.1.0 .
#   docker build --build-arg PYTHON_IMAGE=127.0.0.1:5000/library/python:3.11-slim \
#                --build-arg BUILDKIT_IMAGE=127.0.0.1:5000/moby/buildkit:v0.34.2 -t warmbuild:0.1.0 .
#
# Base images are build arguments so that a mirror or a local registry can stand in for Docker Hub.
# BUILDKIT_IMAGE only contributes /usr/bin/buildctl (a static binary): keep its version the one the
# builders run. The entrypoint is exec-form and Python is PID 1: warmbuild handles SIGINT, SIGTERM
# and SIGHUP itself (cancel the solve, release the slot), so no init process is needed.
# It runs as uid 1001, the uid of GitHub-hosted runners' `runner` user, so that the container
# action can write to the workspace and the runner's file commands.

ARG PYTHON_IMAGE=python:3.11-slim
ARG BUILDKIT_IMAGE=moby/buildkit:v0.34.2

FROM ${BUILDKIT_IMAGE} AS buildkit

FROM ${PYTHON_IMAGE} AS install
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md LICENSE /src/
COPY src /src/src
RUN python3 -m venv /opt/warmbuild && /opt/warmbuild/bin/pip install --quiet /src

FROM ${PYTHON_IMAGE}
COPY --from=buildkit /usr/bin/buildctl /usr/local/bin/buildctl
COPY --from=install /opt/warmbuild /opt/warmbuild
# The GitHub action's main and post steps (action.yml): one executable each, since the runner
# passes a post step the same `args` as the main step.
RUN printf '#!/bin/sh\nexec python -m warmbuild.entry.github_action main\n' >/usr/local/bin/warmbuild-github-main \
 && printf '#!/bin/sh\nexec python -m warmbuild.entry.github_action post\n' >/usr/local/bin/warmbuild-github-post \
 && chmod 0755 /usr/local/bin/warmbuild-github-main /usr/local/bin/warmbuild-github-post \
 && useradd --uid 1001 --user-group --create-home --shell /usr/sbin/nologin warmbuild
ENV PATH=/opt/warmbuild/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.title="warmbuild" \
      org.opencontainers.image.description="Docker image builds on cache-warm BuildKit pools, as a CI step" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 1001:1001
ENTRYPOINT ["/opt/warmbuild/bin/warmbuild"]
CMD ["--help"]
