"""Dataset fingerprint: image properties and per-lesion geometry and contrast statistics."""
