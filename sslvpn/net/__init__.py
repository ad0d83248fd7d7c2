"""Shared network primitives for both protocol cores: buffers, replay windows, packets, pools."""
