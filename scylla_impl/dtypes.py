"""The dtypes a target and its drafts run in, by name. Torch-free, so the CLI and the sweep
spec validate a name without importing torch."""

AUTO = "auto"  # the faster of bf16 and fp32 for the work at hand, measured (scylla_impl/precision.py)
# What `auto` means where a target decodes (generate, sweeps, the profile's knee).
DECODE_HELP = ("auto: whichever of bf16 and fp32 decodes this target faster here: bf16 on GPUs, fp32 where bf16 "
               "is emulated, else timed on the model once and remembered")
NAMES = ("bfloat16", "float16", "float32")
CHOICES = (AUTO, *NAMES)
