"""Files the package ships (a module of its own so that naming them imports no torch)."""

from pathlib import Path

# The embedded default model: S-MobileNet v2 (32x32 stem) trained on scikit-learn's digits.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "default" / "digits_s_mobilenet_v2.safetensors"
