"""Schema-driven fuzzing of the live server on 127.0.0.1 (schemathesis): no 5xx, and every
response conforms to the server's own OpenAPI schema. Bounded: 25 examples per operation."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from server.testing import LiveServer


@pytest.fixture(scope="module")
def live_schema(tiny_checkpoint):
    server = LiveServer("--checkpoint", str(tiny_checkpoint), "--model-name", "tiny", "--profile-repeats", "3")
    server.wait_ready()
    try:
        yield schemathesis.openapi.from_url(server.url + "/openapi.json")
    finally:
        server.stop()


# The properties the server promises: no 5xx, documented status codes, content types and bodies.
# (Random strings are valid "string" headers to the schema but not valid widths or budgets,
# so schemathesis's positive-data check does not apply.)
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance]


def test_every_operation_conforms_to_the_schema(live_schema):
    operations = [result.ok() for result in live_schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert "POST /v1/classify" in labels and "POST /v2/models/{name}/infer" in labels
    for operation in operations:

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case):
            response = case.call(timeout=30)
            assert response.status_code < 500, (operation.label, response.status_code, response.text)
            case.validate_response(response, checks=CHECKS)

        check()
