"""Keep library chatter (weight-loading bars, advisory warnings) off a user's terminal."""

import logging
import warnings


def quiet_libraries() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("torch").setLevel(logging.ERROR)
    # The libraries' advisory warnings only: a UserWarning from this project, or from anything
    # else the user runs in the process, still shows.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|torch|accelerate)(\.|$)")
