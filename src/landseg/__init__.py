"""landseg: segmentation training for remote-sensing rasters."""

__version__ = "0.1.0"
