"""warmbuild: fast Docker image builds for ML workloads on cache-warm BuildKit pools."""

__version__ = "0.1.0"
