"""Loggers of the model's state: TensorBoard per phase, W&B, figures, and their registry.

Python's ``logging`` records the state of the code; these record the state of the model. The
run's own files (scalars, arrays, figures) are written by
:class:`landseg.callbacks.run_logger.RunLogger`, which sends them to these loggers too.
"""
