"""exitbench.models: the model contract, adapters, reference architectures, checkpoints and training.

This module itself holds only constants (no torch), so that the command line can name the defaults
without loading a model library."""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"

#: short names for the checkpoints shipped with the package
BUNDLED = {
    "press-s": "press-s.pt",
    "press-m": "press-m.pt",
    "slimdemucs-s": "slimdemucs-s.pt",
}
DEFAULT_MODEL = "press-s"
