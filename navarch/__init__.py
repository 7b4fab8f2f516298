"""Navarch keeps unhealthy NVIDIA GPU nodes out of a Kubernetes cluster's schedule."""

__version__ = "0.1.0"
