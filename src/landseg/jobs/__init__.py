"""Cross-validation jobs (``landseg cv``): plan, job log, runners (sequential, local workers,
MPI) and summary. See docs/cross_validation.md."""
