"""Serving HTTP: the aiohttp app, the connection guard and the web config.

Imports the core and upstream layers, never the simulator or the command line.
"""
