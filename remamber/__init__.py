"""remamber: referring image segmentation with ReMamber (VMamba + Mamba Twister)."""

__version__ = "0.1.0"
