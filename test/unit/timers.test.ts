// timeoutAfterPoll against a real socket: a reply that arrived while the event loop was busy must beat a
// timeout that fell due in the same stall; a plain setTimeout (the control) loses that race.
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { POLL_GRACE_MS, timeoutAfterPoll, within } from '../../src/timers.js';

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

  it('within() with poll gives the reply the same win; without it, the timeout wins', async () => {
    // within() as a Race: the reply settles the wrapped promise; onTimeout reports the timeout.
    const viaWithin =
      (poll: boolean): Race =>
      (ms, onTimeout) => {
        let settle: () => void = () => {};
        let replied = false;
        const reply = new Promise<void>((resolve) => (settle = resolve));
        void within(reply, ms, () => (replied ? undefined : onTimeout()), poll ? { poll: true } : {});
        return () => {
          replied = true;
          settle();
        };
      };
    expect(await raceAfterStall(viaWithin(false))).toBe('timeout');
    expect(await raceAfterStall(viaWithin(true))).toBe('reply');
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

describe('within', () => {
  const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
  const later = <T>(ms: number, v: T) => sleep(ms).then(() => v);
  const failLater = (ms: number, err: Error) => sleep(ms).then(() => Promise.reject(err));

  it("settles as the promise does when it is in time, and never calls onTimeout then", async () => {
    let timedOut = 0;
    const onTimeout = () => {
      timedOut++;
      return 'timeout';
    };
    await expect(within(later(5, 'value'), 200, onTimeout)).resolves.toBe('value');
    await expect(within(failLater(5, new Error('boom')), 200, onTimeout)).rejects.toThrow('boom');
    await expect(within(later(5, 'polled'), 200, onTimeout, { poll: true })).resolves.toBe('polled');
    await sleep(250); // past every timer: none fired after its promise settled
    expect(timedOut).toBe(0);
  });

  it("takes onTimeout's value, or its error, when the promise is late; what the promise does later is ignored", async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (err: unknown) => unhandled.push(err);
    process.on('unhandledRejection', onUnhandled);
    try {
      await expect(within(later(100, 'late'), 10, () => 'fallback')).resolves.toBe('fallback');
      await expect(
        within(failLater(50, new Error('late failure')), 10, () => {
          throw new Error('gave up');
        }),
      ).rejects.toThrow('gave up');
      await expect(within(new Promise<string>(() => {}), 10, () => 'never settles', { unref: true })).resolves.toBe('never settles');
      // With poll, giving up comes a poll grace after the deadline.
      const t0 = performance.now();
      await expect(within(new Promise<string>(() => {}), 20, () => 'polled out', { poll: true })).resolves.toBe('polled out');
      expect(performance.now() - t0).toBeGreaterThanOrEqual(20 + POLL_GRACE_MS - 1);
      await sleep(120); // the late promises settle now: nothing may surface
      expect(unhandled).toEqual([]);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  it('turns a thenable whose then() throws into a rejection, and stops its timer', async () => {
    let timedOut = 0;
    const bad = { then: () => { throw new Error('bad thenable'); } } as unknown as PromiseLike<string>;
    await expect(within(bad, 30, () => String(++timedOut))).rejects.toThrow('bad thenable');
    await sleep(60);
    expect(timedOut).toBe(0);
  });

  it('with unref, does not keep the process alive for its timer alone', async () => {
    // A process whose only pending work is a within() on a promise that never settles: it exits at once
    // with unref, and only after the timer without it.
    const script = (unref: boolean) => `
      import { within } from ${JSON.stringify(new URL('../../src/timers.ts', import.meta.url).pathname)};
      const t0 = Date.now();
      process.on('exit', () => console.log(Date.now() - t0));
      within(new Promise(() => {}), 1500, () => 0, { unref: ${unref} });`;
    const run = async (unref: boolean) => {
      const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script(unref)], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
      await new Promise((r) => child.once('exit', r));
      return Number(out.trim());
    };
    const [withUnref, without] = await Promise.all([run(true), run(false)]);
    expect(withUnref).toBeLessThan(1000);
    expect(without).toBeGreaterThanOrEqual(1400);
  });
});
