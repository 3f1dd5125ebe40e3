"""Run search without MLflow's two slow passes over the answer.

`POST /api/2.0/mlflow/runs/search` (and its `/ajax-api/` twin, what the UI's
experiment page calls) answers up to 50,000 runs. With basic auth on, MLflow
spends two passes of pure Python on that answer after the database has given
its rows (docs/performance.md, "Where the time goes"):

1. `message_to_json`: `MessageToDict`, a second walk to turn int64 strings
   back into numbers, then `json.dumps(indent=2)`, whose indented form runs
   in Python rather than in C. ~110 ms for 1,000 runs.
2. Basic auth's after-request `redact_search_runs_model_links`: for every
   user who is not an admin, it parses the whole answer back (`resp.json`,
   then `parse_dict` into protobuf) to look for logged-model links to
   withhold. ~85 ms for 1,000 runs. It changes nothing unless the user is
   denied logged models, and it asks that only after parsing.

This module changes neither MLflow nor its answers:

- `render(message)` writes exactly `message_to_json(message)`: the same walk
  over the message's set fields (`ListFields`, field-number order), the same
  scalar forms (int64 as numbers, doubles as Python's repr, NaN and the
  infinities as strings, enums by name, ASCII-escaped strings), indented as
  `json.dumps(indent=2)` indents, in one pass. Any field it does not know
  how to write exactly (maps, bytes, 32-bit floats, extensions, protobuf's
  well-known types, enum values with options or out of range) hands the
  whole message to MLflow's `message_to_json`.
- The search view is MLflow's `_search_runs`, line for line (request
  parsing, validation, `search_runs_impl` with its permission filter and
  paging), with `render` in place of `message_to_json`.
- The redactor asks first what MLflow's asks last: is this user denied
  logged models (`_denied_sibling_tiers`, memoized per request by MLflow,
  the grants behind it cached by `authcache.py`)? If not, MLflow's redactor
  would change nothing, and it is skipped. If so, MLflow's own redactor runs.

tests (mlflow-server/tests/test_search.py, tests/test_search_runs.py)
compare both paths on the same data, including NaN, the infinities,
non-ASCII text, datasets and model links, paging tokens and errors, and for
a user denied logged models. `STACK_FAST_SEARCH_RUNS=false` turns all of it
off.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _string

from google.protobuf.descriptor import FieldDescriptor

from stack_ops.common import swap_after_request, switch_on

_logger = logging.getLogger("stack_ops.server.search")

ENDPOINT = "_search_runs"  # the Flask endpoint of both paths
MAX_RESULTS = 50000  # MLflow's own cap on max_results

_INTEGERS = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)
_MESSAGE, _STRING, _INTEGER, _DOUBLE, _BOOL, _ENUM = range(6)
_INF, _NEG_INF = math.inf, -math.inf


class Unsupported(Exception):
    """A field `render` cannot write exactly as message_to_json does."""


def enabled() -> bool:
    return switch_on("STACK_FAST_SEARCH_RUNS")


def _is_repeated(field) -> bool:
    try:
        return field.is_repeated
    except AttributeError:  # older protobuf
        return field.label == FieldDescriptor.LABEL_REPEATED


_kinds: dict = {}  # field descriptor -> (kind, repeated, quoted JSON name)


def _kind(field) -> tuple[int, bool, str]:
    known = _kinds.get(field)
    if known is not None:
        return known
    if field.is_extension:
        raise Unsupported(field.full_name)
    kind = None
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        message_type = field.message_type
        if message_type.GetOptions().map_entry or message_type.full_name.startswith("google.protobuf."):
            raise Unsupported(field.full_name)
        kind = _MESSAGE
    elif field.type == FieldDescriptor.TYPE_STRING:
        kind = _STRING
    elif field.type in _INTEGERS:
        kind = _INTEGER
    elif field.type == FieldDescriptor.TYPE_DOUBLE:
        kind = _DOUBLE
    elif field.type == FieldDescriptor.TYPE_BOOL:
        kind = _BOOL
    elif field.type == FieldDescriptor.TYPE_ENUM:
        kind = _ENUM
    if kind is None:  # bytes (base64), float (shortest float32 repr), groups
        raise Unsupported(field.full_name)
    known = (kind, _is_repeated(field), _string(field.name))
    _kinds[field] = known
    return known


def _scalar(field, kind: int, value, level: int) -> str:
    if kind == _STRING:
        return _string(value)
    if kind == _MESSAGE:
        return _message(value, level)
    if kind == _INTEGER:
        return int.__repr__(value)
    if kind == _DOUBLE:
        if value != value:
            return '"NaN"'
        if value == _INF:
            return '"Infinity"'
        if value == _NEG_INF:
            return '"-Infinity"'
        return float.__repr__(value)
    if kind == _BOOL:
        return "true" if value else "false"
    enum_value = field.enum_type.values_by_number.get(value)
    if enum_value is None or enum_value.has_options or field.enum_type.full_name == "google.protobuf.NullValue":
        raise Unsupported(field.full_name)
    return _string(enum_value.name)


def _message(message, level: int) -> str:
    fields = message.ListFields()
    if not fields:
        return "{}"
    inner = "\n" + "  " * (level + 1)
    parts = []
    for field, value in fields:
        kind, repeated, name = _kind(field)
        if repeated:
            item = inner + "  "
            text = "[" + item + ("," + item).join([_scalar(field, kind, v, level + 2) for v in value]) + inner + "]"
        else:
            text = _scalar(field, kind, value, level + 1)
        parts.append(name + ": " + text)
    return "{" + inner + ("," + inner).join(parts) + "\n" + "  " * level + "}"


def render(message) -> str:
    """Exactly `mlflow.utils.proto_json_utils.message_to_json(message)`."""
    try:
        return _message(message, 0)
    except Unsupported as e:
        from mlflow.utils.proto_json_utils import message_to_json

        _logger.debug("search answer through message_to_json: %s", e)
        return message_to_json(message)


def make_view(original: Callable) -> Callable | None:
    """MLflow's `_search_runs` with `render` for `message_to_json`; None when this
    MLflow lacks what it is built from."""
    from flask import Response
    from mlflow.protos.service_pb2 import SearchRuns
    from mlflow.server import handlers

    search_runs_impl = getattr(handlers, "search_runs_impl", None)
    if search_runs_impl is None:
        return None

    @handlers.catch_mlflow_exception
    @handlers._disable_if_artifacts_only
    def _search_runs():
        request_message = handlers._get_request_message(
            SearchRuns(),
            schema={
                "experiment_ids": [handlers._assert_array],
                "filter": [handlers._assert_string],
                "max_results": [
                    handlers._assert_intlike,
                    lambda x: handlers._assert_less_than_or_equal(int(x), MAX_RESULTS),
                ],
                "order_by": [handlers._assert_array, handlers._assert_item_type_string],
            },
        )
        response_message = search_runs_impl(request_message)
        response = Response(mimetype="application/json")
        response.set_data(render(response_message))
        return response

    _search_runs.__name__ = ENDPOINT
    return _search_runs


def make_redactor(auth, original: Callable) -> Callable:
    """MLflow's search redactor, run only when it could change the answer."""

    def redact_search_runs_model_links(resp) -> None:
        if auth.sender_is_admin():
            return
        username = auth.authenticate_request().username
        if auth.RESOURCE_TYPE_LOGGED_MODEL not in auth._denied_sibling_tiers(
            username, (auth.RESOURCE_TYPE_LOGGED_MODEL,)
        ):
            return  # MLflow's would parse the answer, find nothing to withhold, and leave it
        original(resp)

    return redact_search_runs_model_links


def install(flask_app, auth) -> bool:
    """Serve run search with the fast view and redactor; False when off or not possible."""
    if not enabled():
        _logger.info("run search through MLflow's own view (STACK_FAST_SEARCH_RUNS=false)")
        return False
    original = flask_app.view_functions.get(ENDPOINT)
    view = make_view(original) if original is not None else None
    redactor = getattr(auth, "redact_search_runs_model_links", None)
    needed = ("_denied_sibling_tiers", "RESOURCE_TYPE_LOGGED_MODEL", "AFTER_REQUEST_HANDLERS")
    if view is None or redactor is None or not all(hasattr(auth, name) for name in needed):
        _logger.warning("run search through MLflow's own view: this MLflow lacks what the fast one is built from")
        return False
    flask_app.view_functions[ENDPOINT] = view
    swap_after_request(auth, redactor, make_redactor(auth, redactor))
    return True
