"""Triton kernels, one op per file, each with its launcher and the torch reference it must equal."""
