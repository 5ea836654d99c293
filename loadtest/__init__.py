"""Locust websocket load test and benchmark for Parley (see loadtest/README.md)."""
