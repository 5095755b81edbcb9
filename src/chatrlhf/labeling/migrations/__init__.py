"""Alembic migrations of the labeling database (run by `chatrlhf label migrate` and at start-up)."""
