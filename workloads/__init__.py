"""Bottom layer: the six evaluation datasets, chat formatting, training corpora, fetched data."""

from workloads.errors import ScyllaError

__all__ = ["ScyllaError"]
