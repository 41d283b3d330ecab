"""lesiongen: self-configuring synthetic lesion generation for brain MRI."""

__version__ = "0.1.0"
