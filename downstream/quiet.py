"""Third-party messages a user cannot act on, silenced in this one place (``debug=true`` shows them all).

What is silenced, and why a user cannot act on it:

- Hugging Face transformers' info and warning log lines (``TRANSFORMERS_VERBOSITY=error``): the weight
  loading report ("masked_spec_embed UNEXPECTED": the pretraining-only mask embedding, unused by a frozen
  encoder), advice about generation and tokenizers, and its weight-loading progress bars
  (``HF_HUB_DISABLE_PROGRESS_BARS=1``). Errors still print.
- Python warnings raised inside transformers, s3prl, torchaudio and fairseq (``THIRD_PARTY_MODULES``):
  deprecations of their own internals (``torchaudio.set_audio_backend``, ``weight_norm``) and of
  arguments this project does not pass.
- ``torch.nn.utils.weight_norm is deprecated``: raised by torch, but called from the upstreams' code.

A variable the user already set in the environment is left as it is.
"""

from __future__ import annotations

import os
import sys
import warnings

#: Environment variables read by the libraries at import (values used unless the user set them).
QUIET_ENVIRONMENT = {"TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
#: Modules whose Python warnings are silenced (a regex matched against the warning's module).
THIRD_PARTY_MODULES = r"(transformers|s3prl|torchaudio|fairseq|huggingface_hub)(\..*)?$"
#: Warning messages silenced wherever they are raised (regexes matched at the message's start).
THIRD_PARTY_MESSAGES = (r"torch\.nn\.utils\.weight_norm is deprecated",)


def quiet_third_party(debug: bool = False) -> None:
    """Silence the messages listed in this module's docstring (process-wide), unless ``debug``."""
    if debug:
        return
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore", module=THIRD_PARTY_MODULES)
    for message in THIRD_PARTY_MESSAGES:
        warnings.filterwarnings("ignore", message=message)
    if "transformers" in sys.modules and os.environ["TRANSFORMERS_VERBOSITY"] == "error":
        sys.modules["transformers"].logging.set_verbosity_error()  # imported before: the variable came late
