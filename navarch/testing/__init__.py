"""Fakes at the hardware boundary, shipped so the demo and the simulator can use them too."""
