"""Clients for outside providers, each speaking the provider's real HTTP API."""
