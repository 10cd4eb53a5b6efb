"""Training infrastructure: the runner loop, replay, logging, snapshots, seeding and device choice."""
