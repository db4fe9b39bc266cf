"""DeltaEdit: text-guided image editing through text-free training in CLIP DeltaSpace."""

__version__ = "0.1.0"

from .api import load_editor  # noqa: E402
from .errors import DeltaEditError, InputError, NoFaceError, WeightsError  # noqa: E402

__all__ = ["load_editor", "DeltaEditError", "InputError", "NoFaceError", "WeightsError", "__version__"]
