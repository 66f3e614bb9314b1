"""The bottom layer: errors, registries, processes, atomic file writes and stop signals.

Everything may import it; it imports nothing of landseg."""
