__version__ = "0.1.0"
"""The version of shared-memory-array, a string such as ``"0.1.0"``."""
