"""docs/openapi.yaml against the code: the same (method, path) set as the route table in
src/api/routes.c, every $ref resolves, and every status_code the C code can answer is
documented (and nothing else). Needs Debian's python3-yaml; starts no otpd."""

import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROUTES_C = ROOT / "src" / "api" / "routes.c"
OPENAPI = ROOT / "docs" / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def load_spec():
    with OPENAPI.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def route_table():
    """(METHOD, path) of every row {"GET", "/path", handler, arg, auth} of routes.c."""
    text = ROUTES_C.read_text(encoding="utf-8")
    table = re.search(r"static const struct route routes\[\]\s*=\s*\{(.*?)\n\};", text, re.S)
    assert table, "route table not found in routes.c"
    rows = re.findall(r'\{\s*"([A-Z]+)"\s*,\s*"(/[^"]*)"\s*,', table.group(1))
    assert rows, "no rows parsed from the route table"
    return rows


def spec_operations(spec):
    return [(m.upper(), path) for path, item in spec["paths"].items()
            for m in item if m in METHODS]


def test_openapi_is_openapi_3():
    spec = load_spec()
    assert str(spec["openapi"]).startswith("3.0.")
    assert spec["info"]["title"] and spec["info"]["version"]


def test_openapi_paths_match_route_table():
    routes = route_table()
    assert len(routes) == len(set(routes)), "duplicate row in routes.c"
    ops = spec_operations(load_spec())
    assert len(ops) == len(set(ops))
    assert set(ops) == set(routes), (
        f"only in routes.c: {sorted(set(routes) - set(ops))}; "
        f"only in openapi.yaml: {sorted(set(ops) - set(routes))}")


def _walk(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield path + (k,), k, v
            yield from _walk(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, path + (i,))


def _resolve(spec, ref):
    assert ref.startswith("#/"), f"external $ref {ref}"
    node = spec
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def test_every_ref_resolves():
    spec = load_spec()
    refs = [v for _, k, v in _walk(spec) if k == "$ref"]
    assert refs
    for ref in refs:
        _resolve(spec, ref)


def test_every_operation_is_complete():
    spec = load_spec()
    ids = set()
    auth_free = {("GET", "/health"), ("GET", "/ready")}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            key = (method.upper(), path)
            assert op.get("operationId") and op["operationId"] not in ids, key
            ids.add(op["operationId"])
            codes = set(op["responses"])
            assert "200" in codes and "413" in codes, key
            # every routed request may carry a body, so every one can get invalid_json
            assert "400" in codes, key
            if key in auth_free:
                assert op.get("security") == [], key
            else:
                assert "401" in codes, key
            for code, resp in op["responses"].items():
                resp = _resolve(spec, resp["$ref"]) if "$ref" in resp else resp
                assert resp.get("description"), (key, code)
                assert "X-Request-Id" in resp.get("headers", {}), (key, code)


def _c_status_codes():
    """status_code strings the C code can put in an answer."""
    found = set()
    for f in list((ROOT / "src" / "api").glob("*.c")) + list((ROOT / "src" / "http").glob("*.c")):
        text = f.read_text(encoding="utf-8")
        # otp_error_set(err, OTP_ERR_X, "status_code", ...) and send_error(..., "code", ...)
        found.update(re.findall(r'otp_error_set\(\s*[^,]+,\s*[A-Z_]+,\s*"([a-z_]+)"', text))
        found.update(re.findall(r'send_error\([^;]*?OTP_ERR_[A-Z_]+,\s*"([a-z_]+)"', text, re.S))
    limits = (ROOT / "src" / "core" / "limits.c").read_text(encoding="utf-8")
    found.update(re.findall(r'return "([a-z_]+_limit)";', limits))
    return found


def test_error_status_codes_match_the_code():
    spec = load_spec()
    documented = set(spec["components"]["schemas"]["Error"]["properties"]["status_code"]["enum"])
    in_code = _c_status_codes()
    assert {"invalid_parameter", "invalid_json", "ip_limit", "phone_limit", "email_limit",
            "chat_id_limit", "unauthorized", "not_found", "too_large"} <= in_code
    assert documented == in_code, (
        f"only in the code: {sorted(in_code - documented)}; "
        f"only documented: {sorted(documented - in_code)}")


def test_error_examples_have_the_compat_shape():
    spec = load_spec()
    order = ["status", "status_code", "message", "content"]
    examples = []
    for _, k, v in _walk(spec):
        if k == "example" and isinstance(v, dict) and "status" in v:
            examples.append(v)
        if k == "examples" and isinstance(v, dict):
            for ex in v.values():
                ex = _resolve(spec, ex["$ref"]) if "$ref" in ex else ex
                if isinstance(ex.get("value"), dict) and "status" in ex["value"]:
                    examples.append(ex["value"])
    assert len(examples) > 30
    for ex in examples:
        keys = list(ex)
        assert keys == [k for k in order if k in ex], ex
        assert isinstance(ex["status"], bool), ex
        if ex["status"] is False and ex != {"status": False}:  # a wrong check is just that
            assert isinstance(ex.get("message"), str) and ex["message"], ex
            if ex["message"].endswith(" parameter must be set"):
                assert "status_code" not in ex, ex
