"""Serving HTTP: the aiohttp app, the connection edge, access control and the web config.

Imports the core and upstream layers, never the simulator or the command line.
"""
