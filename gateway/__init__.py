"""deskgate: a mail gateway for helpdesks."""

__version__ = "0.1.0"
