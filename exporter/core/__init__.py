"""The core: configuration, plain data, the poller, state and the exposition.

Imports no other layer of the package.
"""
