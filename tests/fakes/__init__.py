"""Fake provider and Slack servers (aiohttp apps) that follow the providers' documented behaviour."""
