"""Object storage behind one small interface: S3 (boto3) or a local directory."""
