"""py-fetch: a warden plugin in Python (built with componentize-py).

GETs a URL through the host's policed `http` import. The credential is a
*name*: the host injects its value after the policy check, and the plugin
never sees it. A refusal by the policy comes back as the `denied` error.

    componentize-py -d ../../wit -w action componentize app -o py_fetch.wasm
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import http, log, types


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Manifest:
        return types.Manifest(
            name="py-fetch",
            version="0.1.0",
            description="GET a URL and return its status and body (a Python example).",
            input_schema=json.dumps(
                {"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}, "credential": {"type": "string"}}}
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
        log.log(log.Level.INFO, f"GET {url} (run {invocation.run_id})")
        try:
            resp = http.send(
                http.Request(
                    method="GET",
                    url=url,
                    headers=[("accept", "application/json")],
                    body=None,
                    timeout_ms=None,
                    credential=args.get("credential"),
                )
            )
        except Err as e:
            err = e.value
            if isinstance(err, http.HttpError_Denied):
                raise Err(types.ActionError_Denied(err.value))
            raise Err(types.ActionError_Failed(f"{type(err).__name__}: {getattr(err, 'value', '')}"))
        text = resp.body.decode("utf-8", "replace")
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        return json.dumps({"status": resp.status, "body": body})
