"""py-fetch: a warden plugin in Python (built with componentize-py).

GETs a URL with ordinary-looking Python over standard wasi:http (the small
helper in warden_http.py). The host judges every request against the policy.
The credential is a *name*: the host injects its value after the policy check,
and the plugin never sees it. A refusal comes back as HttpError("denied", …).

    componentize-py -d ../../wit -w action-http componentize app -o py_fetch.wasm
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import log
from wit_world.imports import warden_action_types as types

from warden_http import HttpError, request


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Manifest:
        return types.Manifest(
            name="py-fetch",
            version="0.2.0",
            description="GET a URL and return its status and body (a Python example over wasi:http).",
            input_schema=json.dumps(
                {
                    "type": "object",
                    "required": ["url"],
                    "properties": {"url": {"type": "string"}, "method": {"type": "string"}, "body": {"type": "string"}, "credential": {"type": "string"}},
                }
            ),
            output_schema=json.dumps({"type": "object", "properties": {"status": {"type": "integer"}, "body": {}}}),
            hosts=[],
            credentials=[],
        )

    def run(self, invocation: types.Invocation, input: str) -> str:
        try:
            args = json.loads(input)
        except ValueError as e:
            raise Err(types.ActionError_InvalidInput(f"input is not JSON: {e}"))
        url = args.get("url")
        if not isinstance(url, str):
            raise Err(types.ActionError_InvalidInput("url is required"))
        if args.get("raise"):
            # Shows how an uncaught exception reads in the step error.
            raise ValueError(args["raise"])
        method = args.get("method", "GET")
        body = args.get("body")
        log.log(log.Level.INFO, f"{method} {url} (run {invocation.run_id})")
        headers = {"accept": "application/json"}
        if body is not None:
            headers["content-type"] = "application/json"
        try:
            resp = request(method, url, headers=headers, body=body.encode() if body is not None else None, credential=args.get("credential"))
        except HttpError as e:
            if e.kind == "denied":
                raise Err(types.ActionError_Denied(e.message))
            raise Err(types.ActionError_Failed(f"{e.kind}: {e.message}"))
        try:
            body = resp.json()
        except ValueError:
            body = resp.text()
        return json.dumps({"status": resp.status, "body": body})
