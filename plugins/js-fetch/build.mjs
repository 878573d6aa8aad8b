// Builds fetch.js into a component with componentize-js (StarlingMonkey).
// The WIT is the repository's wit/ (world `action`); `fetch()` makes the
// component import wasi:http, which warden judges like its own http import.
// No `fetch-event`: a plugin is called through `run`, not as an HTTP server.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile, mkdir } from 'node:fs/promises';
import { resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] ?? resolve(here, '../../target/wasm32-wasip2/guest/js_fetch.wasm');
const { component } = await componentize({
  sourcePath: resolve(here, 'fetch.js'),
  witPath: resolve(here, '../../wit'),
  worldName: 'action',
  disableFeatures: ['fetch-event'],
});
await mkdir(dirname(out), { recursive: true });
await writeFile(out, component);
console.log(`js-fetch: ${out} (${component.byteLength} bytes)`);
