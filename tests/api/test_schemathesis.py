"""The API against its own OpenAPI schema (Schemathesis, in-process over ASGI): requests
generated from the schema, valid ones and deliberately invalid ones, to every operation never
cause a 5xx, every answer's status code is one the schema documents for that operation, and
answers match their documented content types and schemas.

Hypothesis is derandomized and bounded (a few examples per operation and mode), so the run
is repeatable and takes well under a minute.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api import create_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 15}


def test_every_operation_honours_the_schema(api_services, api_key, create_job):
    # one real job, so that generated ids sometimes hit something besides 404
    create_job(api_services.database)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(api_services))
    headers = {"Authorization": f"Bearer {api_key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:
        for mode, examples in EXAMPLES.items():

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case):
                case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                check()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # no parameter to make invalid
            except Exception as e:
                raise AssertionError(f"{operation.label} ({mode.value}): {e}") from e
