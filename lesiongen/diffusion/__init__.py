"""Noise schedules and sampling loops (diffusers schedulers), kept apart from the networks."""
