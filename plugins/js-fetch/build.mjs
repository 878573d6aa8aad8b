// Builds fetch.js into a component with componentize-js (StarlingMonkey).
// The WIT is the repository's wit/; only the warden imports and the WASI that
// the engine itself needs are linked (no wasi:http, no fetch-event).
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
  disableFeatures: ['http', 'fetch-event'],
});
await mkdir(dirname(out), { recursive: true });
await writeFile(out, component);
console.log(`js-fetch: ${out} (${component.byteLength} bytes)`);
