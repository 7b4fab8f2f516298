"""Fakes at the hardware boundary and the local control plane, for the tests, the demo and the
simulator: the ``sim`` extra, not the runtime."""
