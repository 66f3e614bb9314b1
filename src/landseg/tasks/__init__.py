"""The LightningModule (:class:`.segmentation.SegmentationTask`), its losses, metrics and
optimisers. "Task" means this LightningModule and nothing else."""
