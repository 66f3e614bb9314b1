"""The report of a finished run (``landseg report``): curves, scores and sample tiles."""
