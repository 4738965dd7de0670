"""The job model: SQLAlchemy models, repository functions for the state machine, Alembic migrations."""
