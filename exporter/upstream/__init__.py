"""Talking to KooDrive: signing, clocks, credentials and the HTTP client.

Imports only the core.
"""
