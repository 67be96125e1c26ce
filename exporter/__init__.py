"""Prometheus exporter for Huawei Cloud KooDrive space usage."""

__version__ = "0.1.0"
