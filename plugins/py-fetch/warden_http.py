"""A small synchronous HTTP client over standard wasi:http, for warden plugins.

    from warden_http import request, HttpError
    resp = request("GET", "https://api.example.com/v1/x", credential="example")
    resp.status, resp.headers, resp.body, resp.json()

Build against the `action-http` world of warden's wit/
(`componentize-py -d wit -w action-http componentize app -o app.wasm`).
Every request is judged by the host's policy; `credential` names a policy
credential (sent as the `warden-credential` header, which the host removes and
replaces with the real value; the plugin never sees it). A refusal raises
HttpError with warden's reason and the deciding rule.
"""

import json as _json
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from componentize_py_types import Err
from wit_world.imports import outgoing_handler, streams
from wit_world.imports import wasi_http_types as t

# Writes and reads go in slices of at most this many bytes (wasi:io's limit for
# one blocking write is 4096).
_WRITE = 4096
_READ = 64 * 1024


class HttpError(Exception):
    """The request produced no response: `kind` is denied, invalid-request,
    too-large, timeout or connection; `message` says why."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class Response:
    status: int
    headers: List[Tuple[str, str]]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return _json.loads(self.body)


def _error(code) -> HttpError:
    if isinstance(code, t.ErrorCode_InternalError) and code.value:
        text = code.value
        if text.startswith("warden refused"):
            return HttpError("denied", text)
        if text.startswith("warden: invalid request"):
            return HttpError("invalid-request", text)
        if text.startswith("warden: too large"):
            return HttpError("too-large", text)
        return HttpError("connection", text)
    if isinstance(code, (t.ErrorCode_ConnectionReadTimeout, t.ErrorCode_ConnectionTimeout, t.ErrorCode_HttpResponseTimeout)):
        return HttpError("timeout", "no complete response before the timeout")
    return HttpError("connection", type(code).__name__)


def _split(url: str):
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise HttpError("invalid-request", f"`{url}` is not an absolute http(s) URL")
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0], default=len(rest))
    authority, path = rest[:cut], rest[cut:] or "/"
    if path.startswith("?"):
        path = "/" + path
    wire = {"http": t.Scheme_Http(), "https": t.Scheme_Https()}.get(scheme.lower(), t.Scheme_Other(scheme))
    return wire, authority, path


_METHODS = {
    "GET": t.Method_Get(), "POST": t.Method_Post(), "PUT": t.Method_Put(), "PATCH": t.Method_Patch(),
    "DELETE": t.Method_Delete(), "HEAD": t.Method_Head(), "OPTIONS": t.Method_Options(),
}


def request(
    method: str,
    url: str,
    headers: Optional[Dict[str, str]] = None,
    body: Optional[bytes] = None,
    credential: Optional[str] = None,
    timeout_ms: Optional[int] = None,
) -> Response:
    fields = t.Fields()
    try:
        for name, value in (headers or {}).items():
            fields.append(name, value.encode())
        if credential is not None:
            fields.append("warden-credential", credential.encode())
    except Err as e:
        raise HttpError("invalid-request", f"header refused by wasi:http: {e.value}")
    req = t.OutgoingRequest(fields)
    scheme, authority, path = _split(url)
    try:
        req.set_method(_METHODS.get(method.upper(), t.Method_Other(method.upper())))
        req.set_scheme(scheme)
        req.set_authority(authority)
        req.set_path_with_query(path)
    except Err:
        raise HttpError("invalid-request", f"wasi:http refused the method, scheme, host or path of {method} {url}")
    options = t.RequestOptions()
    if timeout_ms is not None:
        options.set_first_byte_timeout(timeout_ms * 1_000_000)
    outgoing = req.body()
    try:
        future = outgoing_handler.handle(req, options)
    except Err as e:
        raise _error(e.value)
    if body:
        sink = outgoing.write()
        try:
            for i in range(0, len(body), _WRITE):
                sink.blocking_write_and_flush(body[i : i + _WRITE])
        except Err:
            pass  # the host stopped reading (a body over the cap); the answer says why
        finally:
            sink.__exit__(None, None, None)
    t.OutgoingBody.finish(outgoing, None)
    with future.subscribe() as ready:
        ready.block()
    answer = future.get()
    if answer is None:
        raise HttpError("connection", "no response")
    if isinstance(answer, Err):
        raise HttpError("connection", "the response was already taken")
    result = answer.value
    if isinstance(result, Err):
        raise _error(result.value)
    resp = result.value
    status = resp.status()
    pairs = [(k, v.decode("utf-8", "replace")) for k, v in resp.headers().entries()]
    incoming = resp.consume()
    stream = incoming.stream()
    data = bytearray()
    while True:
        try:
            data += stream.blocking_read(_READ)
        except Err as e:
            if isinstance(e.value, streams.StreamError_Closed):
                break
            raise HttpError("connection", "the response body broke off")
    stream.__exit__(None, None, None)
    return Response(status, pairs, bytes(data))
