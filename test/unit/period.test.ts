import { describe, expect, it } from 'vitest';
import { addMonthsClamped, calendarMonth, periodFor } from '../../src/core/period.js';

const utc = (s: string) => Date.parse(s);

describe('calendar month periods', () => {
  it('labels and bounds the UTC month', () => {
    const p = calendarMonth(utc('2025-09-18T17:51:49Z'));
    expect(p).toEqual({ label: '2025-09', startMs: utc('2025-09-01T00:00:00Z'), endMs: utc('2025-10-01T00:00:00Z') });
  });

  it('rolls over exactly at midnight UTC on the first', () => {
    expect(periodFor(utc('2025-09-30T23:59:59.999Z'), null).label).toBe('2025-09');
    expect(periodFor(utc('2025-10-01T00:00:00.000Z'), null).label).toBe('2025-10');
  });

  it('rolls over the year', () => {
    const p = periodFor(utc('2025-12-31T23:00:00Z'), null);
    expect(p.label).toBe('2025-12');
    expect(p.endMs).toBe(utc('2026-01-01T00:00:00Z'));
    expect(periodFor(p.endMs, null).label).toBe('2026-01');
  });

  it('ignores the local time zone', () => {
    // 2025-10-01T01:00 in UTC+2 is still September in UTC.
    expect(periodFor(utc('2025-10-01T01:00:00+02:00'), null).label).toBe('2025-09');
  });
});

describe('anchored billing periods', () => {
  const anchor = utc('2025-01-15T10:30:00Z');

  it('steps whole months from the anchor', () => {
    const p = periodFor(utc('2025-09-20T00:00:00Z'), anchor);
    expect(p).toEqual({ label: '2025-09', startMs: utc('2025-09-15T10:30:00Z'), endMs: utc('2025-10-15T10:30:00Z') });
  });

  it('puts the instant before the renewal in the previous period', () => {
    expect(periodFor(utc('2025-09-15T10:29:59.999Z'), anchor).label).toBe('2025-08');
    expect(periodFor(utc('2025-09-15T10:30:00.000Z'), anchor).label).toBe('2025-09');
  });

  it('works for instants before the anchor', () => {
    const p = periodFor(utc('2024-12-20T00:00:00Z'), anchor);
    expect(p.startMs).toBe(utc('2024-12-15T10:30:00Z'));
    expect(p.endMs).toBe(utc('2025-01-15T10:30:00Z'));
  });

  it('clamps an anchor on the 31st to short months like Stripe', () => {
    const a31 = utc('2025-01-31T00:00:00Z');
    expect(addMonthsClamped(a31, 1)).toBe(utc('2025-02-28T00:00:00Z'));
    expect(addMonthsClamped(a31, 2)).toBe(utc('2025-03-31T00:00:00Z'));
    expect(addMonthsClamped(utc('2024-01-31T00:00:00Z'), 1)).toBe(utc('2024-02-29T00:00:00Z'));
    const feb = periodFor(utc('2025-03-01T00:00:00Z'), a31);
    expect(feb).toEqual({ label: '2025-02', startMs: utc('2025-02-28T00:00:00Z'), endMs: utc('2025-03-31T00:00:00Z') });
  });

  it('gives consecutive, gap-free periods with distinct labels', () => {
    const a = utc('2025-01-31T12:00:00Z');
    let t = a;
    const labels = new Set<string>();
    for (let i = 0; i < 24; i++) {
      const p = periodFor(t, a);
      expect(p.startMs).toBe(t);
      labels.add(p.label);
      t = p.endMs;
    }
    expect(labels.size).toBe(24);
  });
});
