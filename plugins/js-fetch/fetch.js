// js-fetch: a warden plugin in JavaScript (built with componentize-js).
//
// GETs a URL with the standard `fetch()`; componentize-js sends it over
// wasi:http and the host judges it against the policy like any request. The
// credential is a *name*, given in the `warden-credential` header: the host
// removes it, injects the value after the policy check, and the plugin never
// sees it. A refusal rejects the fetch with warden's reason and rule.
import { log } from 'warden:action/log@0.1.0';

export function describe() {
  return {
    name: 'js-fetch',
    version: '0.2.0',
    description: 'GET a URL and return its status and body (a JavaScript example using fetch()).',
    inputSchema: JSON.stringify({
      type: 'object',
      required: ['url'],
      properties: { url: { type: 'string' }, method: { type: 'string' }, body: { type: 'string' }, credential: { type: 'string' } },
    }),
    outputSchema: JSON.stringify({ type: 'object', properties: { status: { type: 'integer' }, body: {} } }),
    hosts: [],
    credentials: [],
  };
}

// warden's reason, wherever the engine put it on the rejected fetch.
function reason(e) {
  for (let x = e; x; x = x.cause) {
    const text = typeof x === 'string' ? x : x.message ?? x.payload?.val ?? x.val;
    if (text) return String(text);
  }
  return String(e);
}

export async function run(invocation, input) {
  let args;
  try {
    args = JSON.parse(input);
  } catch (e) {
    throw { tag: 'invalid-input', val: `input is not JSON: ${e}` };
  }
  if (typeof args.url !== 'string') {
    throw { tag: 'invalid-input', val: 'url is required' };
  }
  if (args.throw) {
    // Shows how an uncaught exception reads in the step error.
    throw new Error(args.throw);
  }
  const method = args.method ?? 'GET';
  log('info', `${method} ${args.url} (run ${invocation.runId})`);
  const headers = { accept: 'application/json' };
  if (args.credential) headers['warden-credential'] = args.credential;
  if (args.body !== undefined) headers['content-type'] = 'application/json';
  let resp;
  try {
    resp = await fetch(args.url, { method, headers, body: args.body });
  } catch (e) {
    const why = reason(e);
    if (why.includes('warden refused')) throw { tag: 'denied', val: why };
    throw { tag: 'failed', val: why };
  }
  const text = await resp.text();
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = text;
  }
  return JSON.stringify({ status: resp.status, body });
}
