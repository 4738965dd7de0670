"""The API against its own OpenAPI schema (Schemathesis, in-process over ASGI): requests
generated from the schema, valid ones and deliberately invalid ones, to every operation never
cause a 5xx; every answer's status code is one the schema documents for that operation, with
the documented content type and body; a request the schema allows is accepted and one it
does not is refused (the schema is exactly as strict as the server); a method the schema does
not list gets a 405 with `Allow`.

It reads the configuration the CLI run against a live server uses (tests/api/schemathesis.toml:
which refusals no schema can foresee, and real resources for the operations on one), with
the resources made here. Hypothesis is derandomized and bounded (a few examples per operation
and mode), so the run is repeatable and takes well under a minute.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.live_seed import seed
from tests.conftest import make_api_key

CONFIG = Path(__file__).with_name("schemathesis.toml")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    positive_data_acceptance,
    negative_data_rejection,
]
EXAMPLES = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 15}


def test_every_operation_honours_the_schema(api_client, api_services, monkeypatch):
    api_services.config = dataclasses.replace(
        api_services.config, webhook_allowed_hosts=("127.0.0.1",)
    )
    made = seed(api_client, "http://127.0.0.1:9/hook")
    for name, value in made.items():  # what the configuration's [parameters] read
        monkeypatch.setenv(name, value)
    ids = {name.removeprefix("LT_").lower(): value for name, value in made.items()}
    config = SchemathesisConfig.from_path(CONFIG)
    # the key as the CLI's -H gives it: a credential, which negative cases do not drop. One of
    # the tenant's without a rate limit: the run's hundreds of requests go out as fast as the
    # machine makes them, and under the default limit a fast run met 429s where a slow one did
    # not (the rate limit has tests of its own)
    unlimited = make_api_key(api_services.database, name="schemathesis", rate_limit_per_s=0)
    config.projects.default.update(headers={"Authorization": f"Bearer {unlimited}"})
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_client.app, config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    operations.sort(key=lambda op: op.method.upper() == "DELETE")  # the webhook goes last
    answered: dict[str, set[int]] = {}
    for operation in operations:
        for mode, examples in EXAMPLES.items():
            # the real resources, as the CLI run's configuration gives them
            path = {p.name: ids[p.name] for p in operation.path_parameters if p.name in ids}
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=path or None)

            @given(case=strategy)
            @settings(
                max_examples=examples,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case):
                response = case.call()
                answered.setdefault(case.operation.label, set()).add(response.status_code)
                case.validate_response(response, checks=CHECKS)

            try:
                check()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # no parameter to make invalid
            except Exception as e:
                raise AssertionError(f"{operation.label} ({mode.value}): {e}") from e
    # the key was sent and the real resources were found: the answers checked are real ones
    assert not any(401 in statuses for statuses in answered.values()), answered
    for label in (
        "GET /v1/jobs/{job_id}",
        "GET /v1/jobs/{job_id}/events",
        "GET /v1/jobs/{job_id}/segments",
        "POST /v1/jobs/{job_id}/cancel",
        "GET /v1/batches/{batch_id}",
        "POST /v1/batches/{batch_id}/cancel",
        "GET /v1/uploads/{upload_id}",
        "GET /v1/webhooks/{webhook_id}",
        "GET /v1/webhooks/{webhook_id}/deliveries",
        "DELETE /v1/webhooks/{webhook_id}",
        "GET /v1/presenters/{presenter_name}",
        "DELETE /v1/presenters/{presenter_name}",
    ):
        assert answered[label] & {200, 204}, (label, sorted(answered[label]))
