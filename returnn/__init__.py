"""A lean PyTorch trainer for sequence models with RETURNN's config interface."""

__version__ = "0.1.0"
__long_version__ = __version__
