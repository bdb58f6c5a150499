"""LeJEPA self-supervised pretraining for your own folder of images."""

__version__ = "0.1.0"
