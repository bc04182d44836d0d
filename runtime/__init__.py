"""Deployment side of deqstream: reads engine bundles (engines + manifest.json) and runs the
streaming DEQ loop over video. Never imports ``export``. Entry point: ``python -m runtime.run``."""
