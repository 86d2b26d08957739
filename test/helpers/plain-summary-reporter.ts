// Prints one plain closing line, `tests: N passed, N failed, N skipped`, after vitest's own summary, so
// that any tool reading the end of the CI log sees what ran without knowing vitest's format.
import type { Reporter } from 'vitest/node';

interface TaskLike {
  type: string;
  mode?: string;
  result?: { state?: string; errors?: unknown[] };
  tasks?: TaskLike[];
}

function count(tasks: readonly TaskLike[], acc: { passed: number; failed: number; skipped: number }): void {
  for (const t of tasks) {
    if (t.type === 'test') {
      const state = t.result?.state;
      if (state === 'pass') acc.passed++;
      else if (state === 'fail') acc.failed++;
      else acc.skipped++;
    } else {
      // A file or suite that failed by itself (an error in beforeAll, an import that throws) fails the
      // run while its tests show as skipped: count it as a failure so this line never says 0 failed.
      if (t.result?.state === 'fail' && (t.result.errors?.length ?? 0) > 0) acc.failed++;
      if (t.tasks) count(t.tasks, acc);
    }
  }
}

export default class PlainSummaryReporter implements Reporter {
  onFinished(files: unknown[] = [], errors: unknown[] = []): void {
    const acc = { passed: 0, failed: 0, skipped: 0 };
    count(files as TaskLike[], acc);
    // Unhandled errors fail the run even when every test passed; count them as failures here too.
    acc.failed += errors.length;
    // Defer past the default reporter's summary, which is written in the same hook.
    setImmediate(() => process.stdout.write(`\ntests: ${acc.passed} passed, ${acc.failed} failed, ${acc.skipped} skipped\n`));
  }
}
