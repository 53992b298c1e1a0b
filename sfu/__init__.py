"""sfu: a WebRTC SFU and media server that works inside NATed containers."""

__version__ = "0.1.0.dev0"
