"""hostsflow-systemd: systemd services as sFlow data sources, and traffic marking by service."""

__version__ = "0.1.0"
