// The product API that docker compose puts behind Envoy: answers GET /usage and POST /verify (the seed's
// endpoints) with 200 and echoes what usage-limiter told the upstream, so the demo shows the injected
// x-tenant-id / x-tenant-tier and that the API key never reaches the upstream.
// No dependencies: runs on the stock node image.
import { createServer } from 'node:http';

const port = Number(process.env.PORT ?? 8080);

const server = createServer((req, res) => {
  let bytes = 0;
  // Drain the body (multipart uploads to /verify) so keep-alive connections stay usable.
  req.on('data', (chunk) => {
    bytes += chunk.length;
  });
  req.on('end', () => {
    const url = new URL(req.url ?? '/', 'http://upstream');
    const known =
      (req.method === 'GET' && url.pathname === '/usage') ||
      (req.method === 'POST' && url.pathname === '/verify') ||
      url.pathname === '/healthz';
    const body = {
      ok: known,
      method: req.method,
      path: url.pathname,
      tenantId: req.headers['x-tenant-id'] ?? null,
      tier: req.headers['x-tenant-tier'] ?? null,
      requestId: req.headers['x-request-id'] ?? null,
      apiKeyForwarded: req.headers['x-api-key'] !== undefined || req.headers.authorization !== undefined,
      bodyBytes: bytes,
    };
    res.writeHead(known ? 200 : 404, { 'content-type': 'application/json; charset=utf-8' });
    res.end(`${JSON.stringify(body)}\n`);
  });
});

server.listen(port, '0.0.0.0', () => {
  process.stdout.write(`demo upstream listening on :${port}\n`);
});

// PID 1 in a container: exit promptly on docker stop.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
