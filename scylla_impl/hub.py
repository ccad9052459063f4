"""A hub id (org/name) as transformers should load it, decided before transformers tries.

Where huggingface.co does not answer, transformers retries each file for about 25 s, printing
a warning a retry, before it gives up: a minute of noise for a target that cannot load, and
the same for one that sits in the Hugging Face cache already. So the hub is asked once, with a
short timeout: if it answers (or HF_HUB_OFFLINE says not to ask), the id goes to transformers
as it is; if not, a cached copy loads from its snapshot folder, and anything else is one line.
"""

import functools
import urllib.error
import urllib.request
from pathlib import Path

from workloads.errors import ScyllaError

TIMEOUT_S = 5.0


def unreachable(url: str, timeout: float = TIMEOUT_S) -> str | None:
    """Why `url` does not answer, or None where it does (any HTTP status is an answer)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as err:
        return str(err.reason)
    except (OSError, ValueError) as err:  # a timeout, a reset, an endpoint that is no URL
        return str(err) or type(err).__name__
    return None


@functools.cache  # a profile checks the target and then loads it; auto dtype loads it twice more
def loadable(hub_id: str) -> str:
    """`hub_id`, or the folder of its cached snapshot where the hub cannot be reached. Asked once
    per process: where the hub does not answer, every further ask would wait out the timeout."""
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE:  # transformers reads the cache itself, without retries
        return hub_id
    problem = unreachable(constants.ENDPOINT)
    if problem is None:
        return hub_id
    cached = try_to_load_from_cache(hub_id, "config.json")
    if isinstance(cached, str):
        return str(Path(cached).parent)
    raise ScyllaError(f"cannot load target '{hub_id}': it is not in the Hugging Face cache and "
                      f"{constants.ENDPOINT} cannot be reached ({problem}); give a model folder or 'default'")
