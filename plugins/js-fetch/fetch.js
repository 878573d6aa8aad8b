// js-fetch: a warden plugin in JavaScript (built with jco componentize).
//
// GETs a URL through the host's policed `http` import. The credential is a
// *name*: the host injects its value after the policy check, and the plugin
// never sees it. A refusal by the policy comes back as the `denied` error.
import { send } from 'warden:action/http@0.1.0';
import { log } from 'warden:action/log@0.1.0';

export function describe() {
  return {
    name: 'js-fetch',
    version: '0.1.0',
    description: 'GET a URL and return its status and body (a JavaScript example).',
    inputSchema: JSON.stringify({
      type: 'object',
      required: ['url'],
      properties: { url: { type: 'string' }, credential: { type: 'string' } },
    }),
    outputSchema: JSON.stringify({ type: 'object', properties: { status: { type: 'integer' }, body: {} } }),
    hosts: [],
    credentials: [],
  };
}

export function run(invocation, input) {
  let args;
  try {
    args = JSON.parse(input);
  } catch (e) {
    throw { tag: 'invalid-input', val: `input is not JSON: ${e}` };
  }
  if (typeof args.url !== 'string') {
    throw { tag: 'invalid-input', val: 'url is required' };
  }
  log('info', `GET ${args.url} (run ${invocation.runId})`);
  let resp;
  try {
    resp = send({
      method: 'GET',
      url: args.url,
      headers: [['accept', 'application/json']],
      body: undefined,
      timeoutMs: undefined,
      credential: args.credential,
    });
  } catch (e) {
    const err = e.payload ?? e;
    if (err.tag === 'denied') throw { tag: 'denied', val: err.val };
    throw { tag: 'failed', val: `${err.tag}${err.val ? ': ' + err.val : ''}` };
  }
  const text = new TextDecoder().decode(resp.body);
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return JSON.stringify({ status: resp.status, body });
}
