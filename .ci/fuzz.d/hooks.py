"""Hooks for the API fuzz run (loaded through SCHEMATHESIS_HOOKS by .ci/fuzz).

* `json_error_body`, a check: every 4xx from a JSON route says what was
  wrong as `{"code": "...", "message": "..."}` with a JSON content type
  (DESIGN §3). The OAuth callback and the connect confirmation page are
  browser routes and answer pages; they are documented as `text/html` and
  checked by content type instead.
* Authentication: the admin key everywhere, and a widget token (made with
  that key) for the widget's own API, so both reach real handlers.
* Deleting the documented example integration (`github`), or disconnecting
  the example account (`user_123` on `github`, through the admin API or the
  widget), is redirected to the spare integration, so the rest of the run
  keeps reaching real rows and the token routes keep answering an active
  token as well as the inactive shapes.
"""
import json
import os

import requests
import schemathesis

BASE_URL = os.environ["PIPES_FUZZ_BASE_URL"]
ADMIN_KEY = os.environ["PIPES_FUZZ_ADMIN_KEY"]
BROWSER_ROUTES = {"/data-integrations/{slug}/callback", "/connect/{ticket}"}


@schemathesis.check
def json_error_body(ctx, response, case):
    status = response.status_code
    if not 400 <= status < 500 or case.operation.path in BROWSER_ROUTES:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    assert content_type.split(";")[0].strip() == "application/json", (
        f"{status} answered with content type {content_type!r}, not JSON"
    )
    try:
        body = json.loads(response.content or b"")
    except ValueError as err:
        raise AssertionError(f"{status} body is not JSON: {err}") from None
    assert isinstance(body, dict), f"{status} body is not a JSON object"
    assert isinstance(body.get("code"), str) and body["code"], f"{status} body has no `code`"
    assert isinstance(body.get("message"), str) and body["message"], f"{status} body has no `message`"
    return None


@schemathesis.auth(refresh_interval=None).apply_to(path_regex="^/widget/api/")
class WidgetToken:
    # One token for the whole run: schemathesis asks once per operation, and minting is
    # rate limited.
    token = None

    def get(self, case, ctx):
        if WidgetToken.token is None:
            answer = requests.post(
                f"{BASE_URL}/widgets/token",
                json={"user_id": "user_123"},
                headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                timeout=10,
            )
            answer.raise_for_status()
            WidgetToken.token = answer.json()["token"]
        return WidgetToken.token

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


@schemathesis.auth(refresh_interval=None).apply_to(path_regex="^/(?!widget/api/)")
class AdminKey:
    def get(self, case, ctx):
        return ADMIN_KEY

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


# DELETEs whose `github` slug is swapped for `spare`; for the account route,
# only the example user's account.
REDIRECTED_DELETES = {
    "/data-integrations/{slug}": None,
    "/widget/api/{slug}": None,
    "/user_management/users/{user_id}/connected_accounts/{slug}": "user_123",
}


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if case.method.upper() != "DELETE" or case.operation.path not in REDIRECTED_DELETES:
        return
    params = case.path_parameters or {}
    user = REDIRECTED_DELETES[case.operation.path]
    if params.get("slug") == "github" and (user is None or params.get("user_id") == user):
        params["slug"] = "spare"
