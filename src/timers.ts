/**
 * How long an expired timeout still waits for I/O before it gives up: one poll of the event loop that may
 * block this long. Enough for a Redis on the network to answer commands written at the end of the stalled
 * turn (the write coalescer sends them in that turn's check phase, just before the timer falls due).
 */
export const POLL_GRACE_MS = 2;

/**
 * A timeout that first reads what has already arrived.
 *
 * Why: Node runs expired timers before it polls sockets in each turn of the event loop. When one turn ran
 * long (a burst of Checks, a garbage collection), a Redis reply that came back in 2 ms can sit in the socket
 * buffer while the Check's 100 ms timer, now also due, fires first: the Check is answered by its failure
 * policy (a 503 or an unmetered pass) although Redis answered in time, and under load that turned most
 * "Redis timeouts" into the server's own lag. So an expired timer does not give up at once:
 * - `onDue` runs when the timer fires (from then on, nothing new may be sent for this call);
 * - a `setImmediate` lets this turn's poll phase read what is already in the sockets;
 * - a `POLL_GRACE_MS` timer then lets the next poll wait that long for replies to commands that were only
 *   written at the end of the stalled turn;
 * - `onTimeout` runs if the call is still not settled (cancelled) by then.
 * A reply that was waiting settles its promise first and wins; a call Redis really did not answer gives up
 * about `POLL_GRACE_MS` later than `ms`.
 *
 * Returns a function that cancels the timeout, at any stage.
 */
export function timeoutAfterPoll(ms: number, onTimeout: () => void, onDue?: () => void): () => void {
  let immediate: NodeJS.Immediate | undefined;
  let grace: NodeJS.Timeout | undefined;
  const timer = setTimeout(() => {
    onDue?.();
    immediate = setImmediate(() => {
      immediate = undefined;
      grace = setTimeout(onTimeout, POLL_GRACE_MS);
    });
  }, ms);
  return () => {
    clearTimeout(timer);
    if (immediate !== undefined) clearImmediate(immediate);
    if (grace !== undefined) clearTimeout(grace);
  };
}

export type WithinOptions =
  /**
   * Give up only after reading what has already arrived (`timeoutAfterPoll`): for calls on the Check's path,
   * where a reply stuck behind a long turn of the event loop must not lose to the timer. Such a timer keeps
   * the process alive: a Check is in flight. `onDue` runs when the deadline falls due, before the grace
   * (timeoutAfterPoll's): from then on the caller sends nothing more for this call.
   */
  | { readonly poll: true; readonly onDue?: () => void }
  /** `unref`: do not keep the process alive for this timer alone (a deadline on work that must not delay exit). */
  | { readonly poll?: false; readonly unref?: boolean };

/**
 * `p`'s outcome if it settles within `ms`, else `onTimeout()`'s: its value, or the error it throws. What `p`
 * does after that is ignored, a rejection included (it is handled, so it never surfaces as unhandled). The
 * one timeout race of the codebase: the Check's store and directory calls (and every Redis call), the
 * database's deadlines, the bounded QUIT and the scrape's backlog queries all use it.
 */
export function within<T>(p: PromiseLike<T>, ms: number, onTimeout: () => T, opts: WithinOptions = {}): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const expire = (): void => {
      try {
        resolve(onTimeout());
      } catch (err) {
        reject(err);
      }
    };
    let cancel: () => void;
    if (opts.poll === true) cancel = timeoutAfterPoll(ms, expire, opts.onDue);
    else {
      const timer = setTimeout(expire, ms);
      if (opts.unref === true) timer.unref();
      cancel = () => clearTimeout(timer);
    }
    // Promise.resolve: a thenable whose `then` throws becomes a rejection (and still cancels the timer). A
    // native promise is taken as it is.
    Promise.resolve(p).then(
      (v) => {
        cancel();
        resolve(v);
      },
      (err: unknown) => {
        cancel();
        reject(err);
      },
    );
  });
}
