// timeoutAfterPoll against a real socket: a reply that arrived while the event loop was busy must beat a
// timeout that fell due in the same stall; a plain setTimeout (the control) loses that race.
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { POLL_GRACE_MS, timeoutAfterPoll } from '../../src/timers.js';

type Race = (ms: number, onTimeout: () => void) => () => void;
const plainTimeout: Race = (ms, onTimeout) => {
  const t = setTimeout(onTimeout, ms);
  return () => clearTimeout(t);
};

describe('timeoutAfterPoll', () => {
  let server: ChildProcess;
  let port = 0;

  beforeAll(async () => {
    // An echo server in another process (as Redis is): it answers while this process's loop is busy.
    const code = `const s = require('node:net').createServer((c) => { c.on('error', () => {}); c.on('data', (d) => c.write(d)); });
      s.listen(0, '127.0.0.1', () => console.log(s.address().port));`;
    server = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
    port = await new Promise<number>((resolve) => server.stdout!.once('data', (d: Buffer) => resolve(Number(d.toString().trim()))));
  });
  afterAll(() => {
    server.kill();
  });

  /**
   * Sends a request, then blocks the loop past the timeout while the reply arrives; who wins? `corked`
   * sends as the Redis store's write coalescer does: the bytes leave only in this turn's check phase, after
   * the stall, just before the timer is found due.
   */
  async function raceAfterStall(race: Race, corked = false): Promise<'reply' | 'timeout'> {
    const socket = net.connect(port, '127.0.0.1');
    await new Promise<void>((resolve) => socket.once('connect', resolve));
    try {
      return await new Promise<'reply' | 'timeout'>((resolve) => {
        const cancel = race(20, () => resolve('timeout'));
        socket.once('data', () => {
          cancel();
          resolve('reply');
        });
        if (corked) {
          socket.cork();
          setImmediate(() => socket.uncork());
        }
        socket.write('ping');
        // A long turn of the event loop: the reply lands in the socket buffer, the timer falls due.
        const until = performance.now() + 60;
        while (performance.now() < until) {
          /* busy */
        }
      });
    } finally {
      socket.destroy();
    }
  }

  it('lets a reply that arrived during a stall win over a timeout that fell due in it', async () => {
    expect(await raceAfterStall(plainTimeout)).toBe('timeout'); // the premise: timers run before the poll
    expect(await raceAfterStall(timeoutAfterPoll)).toBe('reply');
  });

  it('also when the request only left at the end of the stalled turn, as coalesced Redis writes do', async () => {
    for (let i = 0; i < 5; i++) expect(await raceAfterStall(timeoutAfterPoll, true)).toBe('reply');
  });

  it('still times out when nothing arrives, a poll grace after the deadline, and says when it fell due first', async () => {
    const started = performance.now();
    const order: string[] = [];
    await new Promise<void>((resolve) =>
      timeoutAfterPoll(
        30,
        () => {
          order.push('timeout');
          resolve();
        },
        () => order.push('due'),
      ),
    );
    const took = performance.now() - started;
    expect(order).toEqual(['due', 'timeout']);
    expect(took).toBeGreaterThanOrEqual(29 + POLL_GRACE_MS);
    expect(took).toBeLessThan(500);
  });

  it('cancels before and after the timer has fired', async () => {
    let fired = 0;
    timeoutAfterPoll(5, () => fired++)(); // cancelled before the timer
    // Cancelled after its timer fell due, during the grace: a timer of the same duration created right after
    // it falls due with it or a millisecond later, before the grace (2 ms after the due one's check phase).
    let due = 0;
    const cancelLater = timeoutAfterPoll(5, () => fired++, () => due++);
    setTimeout(cancelLater, 5);
    await new Promise((resolve) => setTimeout(resolve, 40));
    expect(due).toBe(1);
    expect(fired).toBe(0);
  });
});
