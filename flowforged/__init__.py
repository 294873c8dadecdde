"""flowforged: a CI/CD watcher daemon."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flowforged")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
