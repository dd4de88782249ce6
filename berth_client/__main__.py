"""`python -m berth_client …` is `berth-client …`."""

from berth_client.cli import entry

entry()
