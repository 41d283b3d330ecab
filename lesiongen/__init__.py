"""lesiongen: self-configuring synthetic lesion generation for brain MRI."""

__version__ = "0.2.0"
