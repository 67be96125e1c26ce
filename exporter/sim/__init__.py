"""The KooDrive simulator and the demo accounts.

Loaded only by `simulate` and `--demo`: the running exporter never imports it.
"""
