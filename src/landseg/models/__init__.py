"""Networks: the model registry (smp architectures and landseg's U-Net) and model export."""
