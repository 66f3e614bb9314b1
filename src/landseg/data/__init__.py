"""Reading rasters listed in CSV files into tensors for training."""
