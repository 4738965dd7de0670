"""The machinery that moves jobs: the outbox relay and lease reaper, the Celery app and its render
task, the embedded in-process runner, the resume-point sweeper and the webhook delivery loop.

api/ only answers requests and worker/ only renders; this package carries work between them.
"""
