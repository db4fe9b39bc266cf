"""DeltaEdit: text-guided image editing through text-free training in CLIP DeltaSpace."""

__version__ = "0.1.0"
