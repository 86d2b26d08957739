// Shutdown closes the HTTP server without waiting for ever on a request that never finishes: a client that
// trickles its body (a Stripe webhook route is public through Envoy) must not hold back the steps behind it.
import net from 'node:net';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { startHttpServer } from '../../src/http/server.js';

describe('HTTP server close', () => {
  it('drops a request still in flight once the grace has passed', async () => {
    let bodyStarted = false;
    const running = await startHttpServer(
      {
        logger: pino({ level: 'silent' }),
        isServing: () => true,
        readiness: [],
        routes: async (req, res) => {
          bodyStarted = true;
          for await (const _chunk of req); // never ends: the client sends 3 of 1,000 bytes
          res.end('done');
          return true;
        },
      },
      '127.0.0.1',
      0,
    );
    const socket = net.connect(running.port, '127.0.0.1');
    socket.on('error', () => {});
    await new Promise((r) => socket.once('connect', r));
    socket.write('POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc');
    for (let i = 0; i < 100 && !bodyStarted; i++) await new Promise((r) => setTimeout(r, 10));
    expect(bodyStarted).toBe(true);

    const started = performance.now();
    const closed = await Promise.race([running.close(300).then(() => 'closed'), new Promise((r) => setTimeout(() => r('still open'), 5000))]);
    expect(closed).toBe('closed');
    expect(performance.now() - started).toBeGreaterThanOrEqual(250); // it did wait for the request first
    socket.destroy();
  });
});
