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
    local?.close();
  });

  // An echo server in this process: it can only answer when this loop polls, which makes the order of
  // events after a stall exact, whatever else the machine is doing.
  let local: net.Server | undefined;
  let accepted: Promise<void> = Promise.resolve();
  async function localEcho(): Promise<number> {
    local = net.createServer((c) => {
      c.on('error', () => {});
      c.on('data', (d) => c.write(d));
    });
    local.on('connection', () => onAccept());
    await new Promise<void>((resolve) => local!.listen(0, '127.0.0.1', resolve));
    return (local.address() as net.AddressInfo).port;
  }
  let onAccept: () => void = () => {};

  /**
   * Sends a request, then blocks the loop past the timeout while the reply arrives; who wins? `corked`
   * sends as the Redis store's write coalescer does: the bytes leave only in this turn's check phase, after
   * the stall, just before the timer is found due.
   */
  async function raceAfterStall(race: Race, corked = false, peerPort = port): Promise<'reply' | 'timeout'> {
    accepted = peerPort === port ? Promise.resolve() : new Promise<void>((resolve) => (onAccept = resolve));
    const socket = net.connect(peerPort, '127.0.0.1');
    await Promise.all([new Promise<void>((resolve) => socket.once('connect', resolve)), accepted]);
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
    // The request leaves in the stalled turn's check phase. The poll after the timer falls due delivers it to
    // the (in-process) peer, whose answer is read only by a later poll: the grace's. With one setImmediate
    // and no grace the timeout fires before that poll, every time.
    const peer = await localEcho();
    expect(await raceAfterStall(timeoutAfterPoll, true, peer)).toBe('reply');
    expect(await raceAfterStall(timeoutAfterPoll, true, peer)).toBe('reply');
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
    // Cancelled during the grace: onDue queues an immediate ahead of the one that arms the grace timer; it
    // queues the cancel for the next check phase, when the grace timer is armed and not yet due.
    let due = 0;
    const cancelLater: () => void = timeoutAfterPoll(
      5,
      () => fired++,
      () => {
        due++;
        setImmediate(() => setImmediate(cancelLater));
      },
    );
    await new Promise((resolve) => setTimeout(resolve, 40));
    expect(due).toBe(1);
    expect(fired).toBe(0);
  });
});
