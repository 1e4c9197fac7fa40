"""Benchmarks: the relay against a direct XOAUTH2 connection to a fast local upstream.

Run ``python -m bench run [--quick]`` from the repository root; see bench/README.md.
"""
