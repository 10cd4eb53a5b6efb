"""Network building blocks for the Choreographer world model and behaviours.

This package imports only torch: it knows nothing of agents, environments or configs.
Shape convention everywhere: batch-major ``(B, T, ...)`` at module boundaries, time-major
``(T, B, ...)`` inside scans over time (the RSSM and imagination loops).
"""
