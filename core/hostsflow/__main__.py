"""``python -m hostsflow`` runs the agent, like ``hostsflowd``."""

import sys

from .cli import agent_main

sys.exit(agent_main())
