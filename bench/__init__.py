"""The creditd benchmark: `python -m bench` (see `python -m bench --help`)."""
