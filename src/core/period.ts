// Quota periods. Without a billing anchor the period is the UTC calendar month; with one (from a Stripe
// subscription) periods are whole months stepped from the anchor, clamped to the end of short months the
// way Stripe bills (an anchor on the 31st renews on 28/29 Feb, then on 31 Mar). The Redis label is always
// `YYYY-MM` of the period start, so runbooks can compute it.

export interface Period {
  /** `YYYY-MM` of the period start (UTC). */
  readonly label: string;
  readonly startMs: number;
  /** Exclusive end. */
  readonly endMs: number;
}

function label(ms: number): string {
  const d = new Date(ms);
  return `${d.getUTCFullYear()}-${String(d.getUTCMonth() + 1).padStart(2, '0')}`;
}

function daysInMonth(year: number, month: number): number {
  return new Date(Date.UTC(year, month + 1, 0)).getUTCDate();
}

/** The anchor shifted by `months`, its day clamped to the target month's length, time of day kept. */
export function addMonthsClamped(anchorMs: number, months: number): number {
  const a = new Date(anchorMs);
  const totalMonths = a.getUTCFullYear() * 12 + a.getUTCMonth() + months;
  const year = Math.floor(totalMonths / 12);
  const month = totalMonths - year * 12;
  const day = Math.min(a.getUTCDate(), daysInMonth(year, month));
  return Date.UTC(
    year,
    month,
    day,
    a.getUTCHours(),
    a.getUTCMinutes(),
    a.getUTCSeconds(),
    a.getUTCMilliseconds(),
  );
}

export function calendarMonth(nowMs: number): Period {
  const d = new Date(nowMs);
  const startMs = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1);
  const endMs = Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1);
  return { label: label(startMs), startMs, endMs };
}

export function periodFor(nowMs: number, anchorMs: number | null): Period {
  if (anchorMs === null) return calendarMonth(nowMs);
  const a = new Date(anchorMs);
  const n = new Date(nowMs);
  // Estimate the number of months since the anchor, then correct by one either way.
  let k = (n.getUTCFullYear() - a.getUTCFullYear()) * 12 + (n.getUTCMonth() - a.getUTCMonth());
  while (addMonthsClamped(anchorMs, k) > nowMs) k--;
  while (addMonthsClamped(anchorMs, k + 1) <= nowMs) k++;
  const startMs = addMonthsClamped(anchorMs, k);
  return { label: label(startMs), startMs, endMs: addMonthsClamped(anchorMs, k + 1) };
}
