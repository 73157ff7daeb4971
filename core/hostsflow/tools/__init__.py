"""Command-line tools around the agent's wire format (``hostsflow decode``)."""
