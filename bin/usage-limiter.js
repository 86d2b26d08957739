#!/usr/bin/env node
// The published entry point runs the compiled CLI; `npm ci` builds it through the `prepare` script.
import crypto from 'node:crypto';

// Every Check hashes its API key with crypto.hash, which arrived in Node 20.12. On an older Node the
// compiled modules would not even link; say what is wrong instead.
if (typeof crypto.hash !== 'function') {
  process.stderr.write(`usage-limiter: Node 20.12 or later is required (this is ${process.version})\n`);
  process.exit(1);
}
// OpenTelemetry first, and the CLI only after it (a dynamic import: a static one would load the gRPC,
// Redis and HTTP modules before the SDK could hook them).
await import('../dist/telemetry/register.js');
const { main } = await import('../dist/cli.js');

main(process.argv.slice(2)).then(
  (code) => {
    if (typeof code === 'number') process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`usage-limiter: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
