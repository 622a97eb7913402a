"""Clients of a running OpenAI-compatible endpoint: the load generator behind `fm9g-deploy bench`
and the endpoint options it shares with `fm9g-deploy chat`."""
