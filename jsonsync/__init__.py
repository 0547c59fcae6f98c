"""jsonsync: JSON storage with synchronisation and sharing, speaking the Kinto HTTP API v1."""

__version__ = "0.1.0"
