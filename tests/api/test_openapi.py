"""docs/openapi.yaml against the code: the same (method, path) set as the route rows of
src/api/compat.c, native.c and admin.c, every $ref resolves, every operation is complete,
and every error reason the C code can answer is documented (and nothing else): the compat
dialect's as `status_code` (components/schemas/Error), the native and admin routes' as
`error` (components/schemas/NativeError). Needs Debian's python3-yaml; starts no otpd."""

import functools
import pathlib
import re

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
API = ROOT / "src" / "api"
ROUTE_FILES = {"compat": API / "compat.c", "native": API / "native.c", "admin": API / "admin.c"}
OPENAPI = ROOT / "docs" / "openapi.yaml"
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

# A route row: {"POST", "/otp/send", N, J, K, native_send, 0},
_ROW = re.compile(r'\{\s*"([A-Z]+)"\s*,\s*"(/[^"]*)"\s*,\s*([^,]+),\s*([^,]+),\s*([^,]+),'
                  r'\s*([A-Za-z_0-9]+)\s*,\s*([^}]+)\}')


@functools.lru_cache(maxsize=1)
def load_spec():
    """The parsed document (once per run; the tests only read it)."""
    with OPENAPI.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _macros(text):
    return dict(re.findall(r"^#define\s+([A-Z]+)\s+(\S+)\s*$", text, re.M))


def route_rows():
    """Every route row of the dialect files: dicts with dialect (file), method, path, body
    (API_BODY_*), auth (API_AUTH_*), handler - the rows' macros resolved."""
    rows = []
    for dialect, f in ROUTE_FILES.items():
        text = f.read_text(encoding="utf-8")
        macros = _macros(text)
        table = re.findall(r"const struct api_route api_\w+_routes\[\]\s*=\s*\{(.*?)\n\};",
                           text, re.S)
        assert len(table) == 1, f"one route table expected in {f.name}"
        found = _ROW.findall(table[0])
        assert found, f"no route rows parsed from {f.name}"
        for method, path, _d, body, auth, handler, _arg in found:
            rows.append({"dialect": dialect, "method": method, "path": path,
                         "body": macros.get(body.strip(), body.strip()),
                         "auth": macros.get(auth.strip(), auth.strip()), "handler": handler})
    return rows


def route_table():
    """(METHOD, path) of every route row."""
    return [(r["method"], r["path"]) for r in route_rows()]


def test_route_rows_parse():
    rows = route_rows()
    by = {(r["method"], r["path"]): r for r in rows}
    assert by[("POST", "/otp/send")]["body"] == "API_BODY_JSON"
    assert by[("POST", "/otp/send")]["auth"] == "API_AUTH_KEY"
    assert by[("GET", "/admin/apps/{id}")]["auth"] == "API_AUTH_ADMIN"
    assert by[("POST", "/sms")]["body"] == "API_BODY_COMPAT"
    assert by[("GET", "/health")]["auth"] == "API_AUTH_NONE"
    assert {r["dialect"] for r in rows} == set(ROUTE_FILES)


def spec_operations(spec):
    return [(m.upper(), path) for path, item in spec["paths"].items()
            for m in item if m in METHODS]


def test_openapi_is_openapi_3():
    spec = load_spec()
    assert str(spec["openapi"]).startswith("3.0.")
    assert spec["info"]["title"] and spec["info"]["version"]


def test_openapi_paths_match_route_table():
    routes = route_table()
    assert len(routes) == len(set(routes)), "duplicate route row"
    ops = spec_operations(load_spec())
    assert len(ops) == len(set(ops))
    assert set(ops) == set(routes), (
        f"only in the route rows: {sorted(set(routes) - set(ops))}; "
        f"only in openapi.yaml: {sorted(set(ops) - set(routes))}")


def _security_schemes(op, spec):
    sec = op.get("security", spec.get("security"))
    return {name for req in sec for name in req}


def test_security_matches_each_routes_auth():
    """Each operation's security says what its row's auth takes."""
    spec = load_spec()
    key_forms = {"apiKeyId", "apiKeySecret", "apiKeyBasic", "apiKeyBearer", "adminToken"}
    for r in route_rows():
        op = spec["paths"][r["path"]][r["method"].lower()]
        schemes = _security_schemes(op, spec)
        key = (r["method"], r["path"])
        if r["auth"] == "API_AUTH_NONE":
            assert op.get("security") == [], key
        elif r["auth"] in ("API_AUTH_KEY", "API_AUTH_ADMIN"):
            assert schemes == key_forms, key
            # X-API-Key and X-API-Secret go together
            assert {"apiKeyId": [], "apiKeySecret": []} in op["security"], key
            assert "403" in op["responses"], key
        else:
            assert schemes == {"basicAuth"} or schemes == {"basicAuth", "telegramSecret"}, key


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
            assert any(c.startswith("2") for c in codes) and "413" in codes, key
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


def _reasons_in(text):
    """The reasons a C file passes to otp_error_set (also as `cond ? "a" : "b"`) and to
    server.c's send_error."""
    found = set()
    for m in re.finditer(r'otp_error_set\(\s*[^,()]+,\s*[A-Za-z_]+,\s*'
                         r'((?:[^,"()]+\?\s*)?"[a-z_]+"(?:\s*:\s*"[a-z_]+")?)', text):
        found.update(re.findall(r'"([a-z_]+)"', m.group(1)))
    found.update(re.findall(r'send_error\([^;]*?OTP_ERR_[A-Z_]+,\s*"([a-z_]+)"', text, re.S))
    return found


def c_reasons():
    """Every reason the C code can put in an error (src/**/*.c)."""
    found = set()
    for f in (ROOT / "src").rglob("*.c"):
        found |= _reasons_in(f.read_text(encoding="utf-8"))
    return found


# Reasons of src/ the compat dialect never answers as status_code, and why. Each must still
# be in the code (a stale entry fails).
COMPAT_NEVER = {
    "missing_parameter": "answered without a status_code, as the old service did",
    "internal": "answered without a status_code",
    "target_limit": "answered per channel: phone_limit, email_limit, chat_id_limit",
    "forbidden": "API keys and app scopes: native and admin routes",
    "channel_not_allowed": "an app's channels: native sends",
    "no_fallback": "resends to the next channel: native",
    "idempotency_mismatch": "Idempotency-Key: native sends",
    "resend_cooldown": "resends: native",
    "max_sends_reached": "resends: native",
    "not_pending": "resend and cancel: native",
    "conflict": "resend races, app and key ids: native and admin",
    "invalid_form": "form bodies: no route takes one (checked below)",
}
# ... and those the native and admin routes never answer as error.
NATIVE_NEVER = {
    "disabled": "GET /password, a compat route",
    "invalid_form": "form bodies: no route takes one (checked below)",
}


def test_no_route_takes_a_form_body():
    """invalid_form is left out of both enums while no route row reads a form body."""
    forms = [(r["method"], r["path"]) for r in route_rows() if r["body"] == "API_BODY_FORM"]
    assert forms == [], f"{forms} take form bodies: document invalid_form and drop it from " \
                        "COMPAT_NEVER / NATIVE_NEVER"


def test_error_status_codes_match_the_code():
    """The compat dialect: status_code."""
    spec = load_spec()
    documented = set(spec["components"]["schemas"]["Error"]["properties"]["status_code"]["enum"])
    every = c_reasons()
    assert set(COMPAT_NEVER) <= every, sorted(set(COMPAT_NEVER) - every)
    limits = (ROOT / "src" / "core" / "limits.c").read_text(encoding="utf-8")
    in_code = (every - set(COMPAT_NEVER)) | set(re.findall(r'return "([a-z_]+_limit)";', limits))
    assert {"invalid_parameter", "invalid_json", "ip_limit", "phone_limit", "email_limit",
            "chat_id_limit", "unauthorized", "not_found", "too_large"} <= in_code
    assert documented == in_code, (
        f"only in the code: {sorted(in_code - documented)}; "
        f"only documented: {sorted(documented - in_code)}")


def test_native_error_reasons_match_the_code():
    """The native and admin routes: error."""
    spec = load_spec()
    documented = spec["components"]["schemas"]["NativeError"]["properties"]["error"]["enum"]
    assert len(documented) == len(set(documented))
    every = c_reasons()
    assert set(NATIVE_NEVER) <= every, sorted(set(NATIVE_NEVER) - every)
    in_code = every - set(NATIVE_NEVER)
    assert {"missing_parameter", "invalid_parameter", "forbidden", "no_fallback",
            "idempotency_mismatch", "resend_cooldown"} <= in_code
    assert set(documented) == in_code, (
        f"only in the code: {sorted(in_code - set(documented))}; "
        f"only documented: {sorted(set(documented) - in_code)}")
    # and the table of the description names each one
    table = spec["components"]["schemas"]["NativeError"]["properties"]["error"]["description"]
    for reason in documented:
        assert f"`{reason}`" in table, reason


def _examples(spec, node, seen=None):
    """Every example value under node, following $refs (each component once)."""
    seen = set() if seen is None else seen
    out = []
    if isinstance(node, dict):
        if "$ref" in node:
            if node["$ref"] in seen:
                return out
            seen.add(node["$ref"])
            return _examples(spec, _resolve(spec, node["$ref"]), seen)
        for k, v in node.items():
            if k == "example" and isinstance(v, dict):
                out.append(v)
            elif k == "examples" and isinstance(v, dict):
                for ex in v.values():
                    ex = _resolve(spec, ex["$ref"]) if "$ref" in ex else ex
                    if isinstance(ex.get("value"), dict):
                        out.append(ex["value"])
            elif k != "schema":
                out += _examples(spec, v, seen)
    elif isinstance(node, list):
        for v in node:
            out += _examples(spec, v, seen)
    return out


def _compat_shaped(r):
    """Rows answering in the compat shape: compat.c's and admin.c's operations routes."""
    return r["dialect"] == "compat" or r["auth"] not in ("API_AUTH_ADMIN", "API_AUTH_KEY")


def test_error_examples_have_the_compat_shape():
    spec = load_spec()
    order = ["status", "status_code", "message", "content"]
    examples = []
    for r in route_rows():
        if _compat_shaped(r):
            op = spec["paths"][r["path"]][r["method"].lower()]
            examples += [ex for ex in _examples(spec, op["responses"]) if "status" in ex]
    assert len(examples) > 30
    for ex in examples:
        keys = list(ex)
        assert keys == [k for k in order if k in ex], ex
        assert isinstance(ex["status"], bool), ex
        if ex["status"] is False and ex != {"status": False}:  # a wrong check is just that
            assert isinstance(ex.get("message"), str) and ex["message"], ex
            if ex["message"].endswith(" parameter must be set"):
                assert "status_code" not in ex, ex


def test_native_examples_have_the_native_shape():
    spec = load_spec()
    reasons = set(spec["components"]["schemas"]["NativeError"]["properties"]["error"]["enum"])
    view = spec["components"]["schemas"]["Verification"]["required"]
    errors = answers = 0
    for r in route_rows():
        if _compat_shaped(r):
            continue
        op = spec["paths"][r["path"]][r["method"].lower()]
        for code, resp in op["responses"].items():
            for ex in _examples(spec, resp):
                if int(code) >= 400:
                    errors += 1
                    assert list(ex) in (["error", "message", "field"],
                                        ["error", "message", "field", "retry_after"]), ex
                    assert ex["error"] in reasons, ex
                    assert isinstance(ex["message"], str) and ex["message"], ex
                    assert ex["field"] is None or isinstance(ex["field"], str), ex
                    if ex["message"].endswith(" parameter must be set"):
                        assert ex["error"] == "missing_parameter", ex
                    assert "status" not in ex, ex
                elif "verification_id" in ex:
                    answers += 1
                    assert list(ex)[:len(view)] == view, ex
                    assert list(ex)[len(view):] in ([], ["verified"]), ex
                    assert ex["status"] in ("pending", "approved", "expired", "canceled",
                                            "max_attempts_reached", "failed"), ex
    assert errors > 40 and answers >= 4, (errors, answers)
