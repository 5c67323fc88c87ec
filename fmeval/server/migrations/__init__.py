"""Alembic migrations of the leaderboard database (applied by ``fmeval serve`` at start)."""
