"""Independent NumPy reference implementations that the builder's and kernels' outputs are tested against."""
