/**
 * A timeout that first reads what has already arrived.
 *
 * Why: Node runs expired timers before it polls sockets in each turn of the event loop. When one turn ran
 * long (a burst of Checks, a garbage collection), a Redis reply that came back in 2 ms can sit in the socket
 * buffer while the Check's 100 ms timer, now also due, fires first: the Check is answered by its failure
 * policy (a 503 or an unmetered pass) although Redis answered in time, and under load that turned most
 * "Redis timeouts" into the server's own lag. So an expired timer does not give up at once: it waits one
 * `setImmediate`, which runs after this turn's poll phase has read the sockets. A reply that was waiting
 * settles its promise first and wins; a call Redis really did not answer gives up one loop turn later.
 *
 * Returns a function that cancels the timeout.
 */
export function timeoutAfterPoll(ms: number, onTimeout: () => void): () => void {
  let immediate: NodeJS.Immediate | undefined;
  const timer = setTimeout(() => {
    immediate = setImmediate(onTimeout);
  }, ms);
  return () => {
    clearTimeout(timer);
    if (immediate !== undefined) clearImmediate(immediate);
  };
}
