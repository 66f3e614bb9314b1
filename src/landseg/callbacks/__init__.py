"""Lightning callbacks: each owns its files in the run folder and its resumable state."""
