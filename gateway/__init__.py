"""skyrelay: a live-video gateway for drones and cameras."""

__version__ = "0.1.0"
