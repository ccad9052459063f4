"""The dtypes a target and its drafts run in, by name. Torch-free, so the CLI and the sweep
spec validate a name without importing torch."""

AUTO = "auto"  # the fastest dtype the device runs natively (scylla_impl/precision.py)
NAMES = ("bfloat16", "float16", "float32")
CHOICES = (AUTO, *NAMES)
