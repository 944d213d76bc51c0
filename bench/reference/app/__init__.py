"""A small text-classification service: the reference workload of bench/run."""
