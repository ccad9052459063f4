"""A draft tree's shape (top_k, depth, total_tokens), checked without torch: the CLI and the
sweep spec refuse a shape the engine cannot build before anything loads.

The pool EAGLE-2's tree picks from holds k + (D-1)k^2 candidates: the k children of the root,
then k*k at each further level (tree.py builds it).
"""

from workloads.errors import ScyllaError


def pool_size(top_k: int, depth: int) -> int:
    return top_k + (depth - 1) * top_k * top_k


def check_shape(top_k: int, depth: int, total_tokens: int) -> None:
    if top_k < 1:
        raise ScyllaError(f"top_k must be >= 1, got {top_k}")
    if depth < 1:
        raise ScyllaError(f"depth must be >= 1, got {depth}")
    if total_tokens < 2:
        raise ScyllaError(f"total_tokens must be >= 2 (the root and one draft token), got {total_tokens}")
    if total_tokens - 1 > pool_size(top_k, depth):
        raise ScyllaError(
            f"total_tokens {total_tokens} is larger than the tree's pool: top_k {top_k} and depth {depth} "
            f"give {pool_size(top_k, depth)} candidates, so at most {pool_size(top_k, depth) + 1} tokens"
        )
