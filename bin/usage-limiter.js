#!/usr/bin/env node
// The published entry point runs the compiled CLI; `npm ci` builds it through the `prepare` script.
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
