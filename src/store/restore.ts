// Validation shared by both stores' restoreUsage, so a bad rebuild is rejected the same way everywhere.
import type { PeriodUsage } from './types.js';

export function assertValidRestore(usage: PeriodUsage, periodEndMs: number, nowMs: number): void {
  const counts = [usage.total, ...Object.values(usage.endpoints)];
  for (const n of counts) {
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`restored counts must be integers >= 0, got ${n}`);
  }
  if (!Number.isSafeInteger(periodEndMs) || !Number.isSafeInteger(nowMs)) {
    throw new RangeError('periodEndMs and nowMs must be integers');
  }
}
