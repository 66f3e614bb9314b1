"""Where and how a run is launched: cluster detection (SLURM, torchrun, MPI), the
multi-node start handshake, and the host's devices (visible GPUs, CPU threads, native bf16)."""
