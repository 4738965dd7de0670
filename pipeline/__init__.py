"""Generation only: the LiveAvatar streaming generator. Knows nothing of databases, queues or S3."""
