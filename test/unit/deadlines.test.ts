import { describe, expect, it } from 'vitest';
import { withDeadlines } from '../../src/db/client.js';

describe('withDeadlines', () => {
  const store = {
    n: 2,
    async double(x: number) {
      return x * this.n;
    },
    never(): Promise<void> {
      return new Promise(() => {});
    },
    async slowClose() {
      await new Promise((r) => setTimeout(r, 60));
      return 'closed';
    },
  };

  it('rejects a listed call the driver never settles, naming it, and leaves the rest alone', async () => {
    const bounded = withDeadlines(store, ['double', 'never'], 30, 'test store');
    expect(await bounded.double(21)).toBe(42); // `this` is still the original object
    const started = performance.now();
    await expect(bounded.never()).rejects.toMatchObject({ code: 'DatabaseError', message: 'test store never timed out after 30 ms' });
    expect(performance.now() - started).toBeLessThan(500);
    expect(await bounded.slowClose()).toBe('closed'); // not listed: no deadline
    expect(store.never).not.toBe(bounded.never); // the original is not changed
    expect(Object.keys(bounded).sort()).toEqual(Object.keys(store).sort());
  });
});
