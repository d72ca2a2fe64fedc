"""Capture Q/K/V of Hugging Face causal LMs into headrecon.activations files.

    from headrecon_capture import capture
    capture(model, sequences, "acts.safetensors", dtype="bf16", batch_size=4)

or `python -m headrecon_capture --help`. Supported architectures:
SUPPORTED_MODEL_TYPES (others are refused with UnsupportedModel)."""
from .activations_file import ActivationsWriter
from .capture import __version__, capture
from .model_hooks import SUPPORTED_MODEL_TYPES, UnsupportedModel, check_supported

__all__ = ["ActivationsWriter", "capture", "check_supported", "SUPPORTED_MODEL_TYPES", "UnsupportedModel",
           "__version__"]
