"""callbox: a WebRTC signaling server on trio."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("callbox")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
