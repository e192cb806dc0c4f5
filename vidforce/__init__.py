"""vidforce: post-training and streaming of autoregressive video diffusion transformers."""
__version__ = "0.1.0"
