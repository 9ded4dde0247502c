"""The nightly intake: incoming batches, their contracts, drift, and the data versions (DVC + git) of a night.
Imports the core only.
"""
